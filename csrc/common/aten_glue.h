// The torch side that the CPU (csrc/cpu/ops_cpu.cpp) and CUDA (csrc/cuda/ops_cuda.cpp) kernels
// share: argument checks, contiguous inputs in the dtype they rank in, the outputs the kernels
// write, and the NaN index they return. The Python front (sparseforce/ops) checks every argument
// first; these checks guard direct torch.ops calls against reading out of bounds.
#pragma once

#include <cstdint>
#include <optional>
#include <utility>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/core/List.h>

#include "operand.h"

namespace sparseforce {

inline bool is_float(at::ScalarType st) {
  return st == at::kHalf || st == at::kBFloat16 || st == at::kFloat || st == at::kDouble;
}

// `dev`: the device the call runs on (the first input's).
inline void check_float(const at::Tensor& t, const char* name, size_t i, const at::Device& dev) {
  TORCH_CHECK(t.device() == dev, "sparseforce (", c10::DeviceTypeName(dev.type(), /*lower_case=*/true), "): ", name,
              "[", i, "] is on ", t.device(), " but the call runs on ", dev, "; all tensors of one call must share it");
  TORCH_CHECK(is_float(t.scalar_type()), "sparseforce: ", name, "[", i, "] has dtype ", t.scalar_type(),
              "; expected fp16, bf16, fp32 or fp64");
}

inline at::ScalarType promoted_dtype(at::TensorList ts) {
  at::ScalarType d = ts.empty() ? at::kFloat : ts[0].scalar_type();
  for (const auto& t : ts) d = at::promote_types(d, t.scalar_type());
  return d;
}

inline void check_k(int64_t k, int64_t n) {
  TORCH_CHECK_VALUE(k >= 0 && k <= n, "k=", k, " is outside [0, ", n, "]: the inputs hold ", n, " elements in all");
}

// What the kernels report where the schema says `nan_index`: a 0-dim int64 on the call's device.
inline at::Tensor index_tensor(int64_t i, const at::Device& dev) {
  return at::full({}, i, at::TensorOptions().dtype(at::kLong).device(dev));
}

// The contiguous tensors the kernels write; those of `out` that are not contiguous get a
// stand-in, copied back by finish_out.
inline std::vector<at::Tensor> writable(at::TensorList out, at::TensorList like) {
  TORCH_CHECK(out.size() == like.size(), "sparseforce: out has ", out.size(), " tensors but there are ",
              like.size(), " inputs");
  std::vector<at::Tensor> w;
  for (size_t i = 0; i < out.size(); ++i) {
    TORCH_CHECK(out[i].scalar_type() == at::kBool && out[i].sizes() == like[i].sizes() &&
                    out[i].device() == like[i].device(),
                "sparseforce: out[", i, "] must be a bool tensor of the input's shape on its device");
    w.push_back(out[i].is_contiguous() ? out[i] : at::empty(out[i].sizes(), out[i].options()));
  }
  return w;
}

inline void finish_out(at::TensorList out, const std::vector<at::Tensor>& w) {
  for (size_t i = 0; i < out.size(); ++i) {
    if (!w[i].is_same(out[i])) out[i].copy_(w[i]);
  }
}

// The inputs of one selection or histogram pass, as the kernels read them.
struct Operands {
  std::vector<Operand> list;     // the non-empty inputs, in order
  std::vector<at::Tensor> hold;  // the contiguous copies they point into
  int64_t n = 0;                 // elements in all
  bool any_double = false;       // an input ranks in float64
};

// grads empty: `a` are scores, ranked in their own dtype. Otherwise |a*grads| ranks: each pair is
// promoted to one dtype (exact, and |w*g| is then formed in that precision), at least float32
// when `widen` (the histogram kernels form |w*g| in float32 unless an input is float64).
// `competing`: empty, or one bool mask per input. `out`: the masks to write (writable's), or null.
inline Operands gather(at::TensorList a, at::TensorList grads, at::TensorList competing,
                       const std::vector<at::Tensor>* out, const at::Device& dev, bool widen = false) {
  const bool saliency = !grads.empty();
  const char* name = saliency ? "weights" : "scores";
  TORCH_CHECK(!saliency || grads.size() == a.size(), "sparseforce: weights has ", a.size(),
              " tensors but grads has ", grads.size());
  TORCH_CHECK(competing.empty() || competing.size() == a.size(), "sparseforce: competing has ", competing.size(),
              " tensors but there are ", a.size(), " inputs");
  Operands ops;
  for (size_t i = 0; i < a.size(); ++i) {
    check_float(a[i], name, i, dev);
    at::ScalarType st = a[i].scalar_type();
    if (saliency) {
      check_float(grads[i], "grads", i, dev);
      TORCH_CHECK(a[i].sizes() == grads[i].sizes(), "sparseforce: weights[", i, "] and grads[", i,
                  "] differ in shape");
      st = at::promote_types(st, grads[i].scalar_type());
      if (widen && st != at::kDouble) st = at::kFloat;
    }
    ops.any_double |= st == at::kDouble;
    if (a[i].numel() == 0) continue;
    Operand o;
    at::Tensor x = a[i].to(st).contiguous();
    o.a = x.data_ptr();
    ops.hold.push_back(std::move(x));
    if (saliency) {
      at::Tensor g = grads[i].to(st).contiguous();
      o.b = g.data_ptr();
      ops.hold.push_back(std::move(g));
    }
    if (!competing.empty()) {
      TORCH_CHECK(competing[i].scalar_type() == at::kBool && competing[i].sizes() == a[i].sizes() &&
                      competing[i].device() == dev,
                  "sparseforce: competing[", i, "] must be a bool tensor of the input's shape on its device");
      at::Tensor m = competing[i].contiguous();
      o.competing = reinterpret_cast<const uint8_t*>(m.data_ptr<bool>());
      ops.hold.push_back(std::move(m));
    }
    if (out != nullptr) o.out = reinterpret_cast<uint8_t*>((*out)[i].data_ptr<bool>());
    o.type = st;
    o.n = a[i].numel();
    o.offset = ops.n;
    o.index = static_cast<int64_t>(i);
    ops.n += o.n;
    ops.list.push_back(o);
  }
  return ops;
}

// The tensors of one masked_sgd_ step, as the kernels read them.
struct SgdOperands {
  std::vector<SgdOperand> list;  // the non-empty params, in order
  std::vector<at::Tensor> hold;
  // Non-contiguous params/buffers are updated through contiguous copies, written back after.
  std::vector<std::pair<at::Tensor, at::Tensor>> write_back;
  int64_t n = 0;

  // After the kernels (stream-ordered on a GPU: the copies are released to the caching
  // allocator, which reuses them only for later work on the stream).
  void finish() {
    for (auto& [orig, copy] : write_back) orig.copy_(copy);
  }
};

inline SgdOperands gather_sgd(at::TensorList params, at::TensorList grads, at::TensorList momentum_buffers,
                              const c10::List<std::optional<at::Tensor>>& masks, bool use_buf,
                              const c10::List<bool>& fresh, const at::Device& dev) {
  const size_t n = params.size();
  TORCH_CHECK(grads.size() == n && masks.size() == n, "sparseforce: masked_sgd_ lists differ in length");
  TORCH_CHECK(!use_buf || (momentum_buffers.size() == n && fresh.size() == n),
              "sparseforce: masked_sgd_ with momentum needs one buffer and one fresh flag per param");
  SgdOperands ops;
  for (size_t i = 0; i < n; ++i) {
    const at::Tensor& p = params[i];
    TORCH_CHECK(p.device() == dev && grads[i].device() == dev, "sparseforce (",
                c10::DeviceTypeName(dev.type(), /*lower_case=*/true), "): params[", i, "] and grads[", i,
                "] must be on ", dev);
    TORCH_CHECK(grads[i].scalar_type() == p.scalar_type() && grads[i].sizes() == p.sizes(),
                "sparseforce: grads[", i, "] must match params[", i, "] in dtype and shape");
    if (p.numel() == 0) continue;
    SgdOperand s;
    s.type = p.scalar_type();
    TORCH_CHECK(is_float(s.type), "sparseforce: params[", i, "] has dtype ", s.type);
    at::Tensor pc = p.contiguous();
    if (!pc.is_same(p)) ops.write_back.emplace_back(p, pc);
    at::Tensor gc = grads[i].contiguous();
    s.p = pc.data_ptr();
    s.g = gc.data_ptr();
    ops.hold.push_back(pc);
    ops.hold.push_back(gc);
    if (use_buf) {
      const at::Tensor& b = momentum_buffers[i];
      TORCH_CHECK(b.scalar_type() == p.scalar_type() && b.sizes() == p.sizes() && b.device() == dev,
                  "sparseforce: momentum_buffers[", i, "] must match params[", i, "]");
      at::Tensor bc = b.contiguous();
      if (!bc.is_same(b)) ops.write_back.emplace_back(b, bc);
      s.buf = bc.data_ptr();
      s.fresh = fresh.get(i);
      ops.hold.push_back(bc);
    }
    const std::optional<at::Tensor> m = masks.get(i);
    if (m.has_value() && m->defined()) {
      TORCH_CHECK(m->scalar_type() == at::kBool && m->sizes() == p.sizes() && m->device() == dev,
                  "sparseforce: masks[", i, "] must be a bool tensor of the param's shape on its device");
      at::Tensor mc = m->contiguous();
      s.mask = reinterpret_cast<const uint8_t*>(mc.data_ptr<bool>());
      ops.hold.push_back(mc);
    }
    s.n = p.numel();
    s.offset = ops.n;
    ops.n += s.n;
    ops.list.push_back(s);
  }
  return ops;
}

}  // namespace sparseforce
