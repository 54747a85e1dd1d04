// The CPU masked_sgd_ step over raw inputs (common/operand.h); ops_cpu.cpp is its torch layer.
#pragma once

#include <cstdint>
#include <vector>

#include "../common/operand.h"

namespace sparseforce {
namespace cpu {

struct SgdHyper {
  double lr, momentum, dampening, weight_decay;
  bool nesterov;
};

// One torch.optim.SGD step of every input (`total` elements in all, offsets in order), pruned
// entries (mask false) of p and buf left at +0.
void masked_sgd(const std::vector<SgdOperand>& inputs, int64_t total, const SgdHyper& hyper);

}  // namespace cpu
}  // namespace sparseforce
