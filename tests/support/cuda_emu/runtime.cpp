// The sfemu runtime: fibers, the scheduler, barriers, warp collectives, diagnostics and the
// runtime API calls the launchers make. See include/sfemu.h for the model.
//
// Concurrency: exactly one fiber runs at any time, anywhere. A launch admits up to `resident`
// blocks at once; each has an OS thread (so its `static thread_local` shared memory is its own)
// on which its fibers run. The thread whose block owns the baton runs; the others wait on one
// condition variable. Handing the baton over goes through the mutex, which orders every memory
// access of one fiber before those of the next, so the kernels see sequentially consistent
// memory and the emulator itself needs no atomics.
//
// Weak global memory (config `weak`): a GPU makes one block's global writes visible to another
// block only through a fence (or at the kernel's end); relaxed atomics are coherent per location
// but not ordered with other locations. The kernels are compiled with GCC's ThreadSanitizer
// instrumentation, whose __tsan_write* hooks this file defines: every store to a registered
// device allocation (sfemu_guard_add: the workspace, the outputs) makes the block a pending
// writer of those bytes. Memory holds the view of the block that runs: its own pending bytes, and for
// bytes other blocks wrote since their last __threadfence, the value before those writes (the
// "published" value). Views are swapped when the baton changes blocks; a fence publishes the
// block's bytes; an atomic first sees the latest value (coherence); the kernel's end publishes
// everything. So a reader that relies on another block's writes without the fence/atomic
// handshake reads stale data deterministically, as a GPU may. Not modelled: a fence publishes
// the whole block's writes, not only its thread's (right after a __syncthreads, as in the
// kernels, the PTX model's cumulativity agrees); stale cached loads of a block's own earlier
// reads; stores made through library calls (memcpy), which the kernels do not make.
//
// Guard bytes: device allocations registered by the host side (sfemu_guard_add) are surrounded
// by a known pattern, checked after every launch, so a kernel writing past an allocation fails
// the launch in every build (AddressSanitizer also poisons them).
#include <dlfcn.h>
#include <link.h>
#include <pthread.h>

#include <algorithm>
#include <numeric>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <list>
#include <map>
#include <mutex>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "sfemu.h"

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#define SFEMU_ASAN 1
#else
#define SFEMU_ASAN 0
#endif

namespace sfemu {

ThreadCtx* current = nullptr;

namespace {

// ---- configuration (sfemu_configure; defaults from SFEMU_* environment variables)

struct Config {
  unsigned long long seed = 0;
  int order = 1;        // 0: in order, 1: random
  int block_order = 0;  // 0: in order, 1: reversed, 2: shuffled
  int resident = 2;     // blocks interleaved at once
  int preempt = 50;     // per mille
  int occupancy = 2;    // answer of the occupancy query; <= 0: the query fails
  int weak = 0;         // 1: weak global memory across blocks (needs instrumented kernels)
};

long env_long(const char* name, long dflt) {
  const char* s = std::getenv(name);
  if (s == nullptr || *s == '\0') return dflt;
  char* end = nullptr;
  const long v = std::strtol(s, &end, 10);
  return *end == '\0' ? v : dflt;
}

Config& config() {
  static Config c = [] {
    Config d;
    d.seed = static_cast<unsigned long long>(env_long("SFEMU_SEED", 0));
    d.order = static_cast<int>(env_long("SFEMU_ORDER", d.order));
    d.block_order = static_cast<int>(env_long("SFEMU_BLOCK_ORDER", d.block_order));
    d.resident = static_cast<int>(env_long("SFEMU_RESIDENT", d.resident));
    d.preempt = static_cast<int>(env_long("SFEMU_PREEMPT", d.preempt));
    d.occupancy = static_cast<int>(env_long("SFEMU_OCCUPANCY", d.occupancy));
    d.weak = static_cast<int>(env_long("SFEMU_WEAK", d.weak));
    return d;
  }();
  return c;
}

cudaError_t g_last_error = cudaSuccess;
std::string g_diag;
unsigned long long g_launches = 0;
unsigned long long g_switches = 0;
std::mutex g_launch_mutex;  // one launch at a time (ctypes releases the GIL)

// The kernels were compiled with the store instrumentation weak memory needs (build.py).
#if defined(SFEMU_INSTRUMENTED)
constexpr bool kInstrumented = true;
#else
constexpr bool kInstrumented = false;
#endif

constexpr size_t kStackBytes = SFEMU_ASAN ? (512u << 10) : (128u << 10);

// ---- execution contexts. On x86-64 a context is a saved stack pointer and the switch saves
// only the callee-saved registers and the FP control words (ucontext's swapcontext also makes a
// signal-mask system call per switch, which dominated the emulator's run time).

using Entry = void (*)(void*);

#if defined(__x86_64__)
struct Context {
  void* sp = nullptr;
};
extern "C" void sfemu_context_switch(void** save_sp, void* new_sp);
extern "C" void sfemu_context_trampoline();
asm(R"(
  .text
  .globl sfemu_context_switch
  .type sfemu_context_switch,@function
sfemu_context_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size sfemu_context_switch, .-sfemu_context_switch
  .globl sfemu_context_trampoline
  .type sfemu_context_trampoline,@function
sfemu_context_trampoline:
  movq %r12, %rdi
  andq $-16, %rsp
  callq *%r13
  ud2
  .size sfemu_context_trampoline, .-sfemu_context_trampoline
)");

inline void context_switch(Context* from, Context* to) { sfemu_context_switch(&from->sp, to->sp); }

// A fresh stack laid out as sfemu_context_switch leaves a suspended one: its first switch-in
// "returns" into the trampoline, which calls entry(arg) (passed in r12/r13).
void context_make(Context* c, char* stack, size_t size, Entry entry, void* arg) {
#if SFEMU_ASAN
  // A pooled stack still carries the redzones of the frames of the fiber that last ran on it
  // (fibers end by switching away, never unwinding): clear them, or they read as overflows.
  __asan_unpoison_memory_region(stack, size);
#endif
  uintptr_t top = (reinterpret_cast<uintptr_t>(stack) + size) & ~uintptr_t(15);
  uint64_t* s = reinterpret_cast<uint64_t*>(top);
  *--s = 0;                                                    // alignment padding
  *--s = reinterpret_cast<uint64_t>(&sfemu_context_trampoline);  // return address
  *--s = 0;                                                    // rbp
  *--s = 0;                                                    // rbx
  *--s = reinterpret_cast<uint64_t>(arg);                      // r12
  *--s = reinterpret_cast<uint64_t>(entry);                    // r13
  *--s = 0;                                                    // r14
  *--s = 0;                                                    // r15
  *--s = (uint64_t(0x037f) << 32) | 0x1f80u;                   // x87 control word, MXCSR defaults
  c->sp = s;
}
#else
#error "sfemu's context switch is written for x86-64 (the machines this project tests on)"
#endif

// ---- fibers

struct Block;

enum class St { Ready, Barrier, Warp, Done };

struct Fiber {
  Context ctx;
  ThreadCtx tc;
  Block* block = nullptr;
  int index = 0, lane = 0, warp = 0;
  St st = St::Ready;
  const char* file = nullptr;  // where it waits
  int line = 0;
  char* stack = nullptr;
  uint64_t result = 0;
};

struct WarpOp {
  int op, arg, width;
  unsigned mask, arrived = 0, unread = 0;
  bool complete = false;
  const char* file;
  int line;
  uint64_t vals[32], results[32];
};

struct Warp {
  unsigned present = 0, exited = 0;
  std::list<WarpOp> ops;  // stable: waiting lanes hold iterators
};

struct Block {
  uint3 idx;
  std::vector<Fiber> fibers;
  std::vector<Warp> warps;
  int live = 0, exited = 0;
  int bar_arrived = 0, bar_kind = 0, bar_acc = 0;
  const char* bar_file = nullptr;
  int bar_line = 0;
  int exit_index = -1;  // first thread to exit, for reports
  Context sched;
  const void* sched_stack = nullptr;
  size_t sched_stack_size = 0;
  std::thread os;
  bool finished = false;
  std::vector<uintptr_t> weak_words;  // words it may be a pending writer of
};

struct Launch {
  const char* file;
  int line;
  dim3 grid, block;
  Body body;
  void* closure;
  int nthreads;
  std::vector<uint3> pending;
  size_t next_pending = 0;
  std::vector<Block*> resident;
  std::vector<Block*> all;
  std::mutex m;
  std::condition_variable cv;
  Block* baton = nullptr;
  Fiber* next = nullptr;
  bool failed = false;
  bool done = false;
  std::string diag;
  std::mt19937_64 rng;
  Fiber* running = nullptr;
};

Launch* g_launch = nullptr;

std::vector<char*>& stack_pool() {
  static std::vector<char*> pool;
  return pool;
}
char* get_stack() {
  auto& pool = stack_pool();
  if (!pool.empty()) {
    char* s = pool.back();
    pool.pop_back();
    return s;
  }
  return static_cast<char*>(std::malloc(kStackBytes));
}

std::string site(const char* file, int line) {
  if (file == nullptr) return "?";
  const char* base = std::strrchr(file, '/');
  std::ostringstream o;
  o << (base != nullptr ? base + 1 : file) << ":" << line;
  return o.str();
}

std::string block_name(const Block* b) {
  std::ostringstream o;
  o << "block (" << b->idx.x << "," << b->idx.y << "," << b->idx.z << ")";
  return o.str();
}

std::string thread_name(const Fiber* f) {
  std::ostringstream o;
  o << "thread (" << f->tc.tid.x << "," << f->tc.tid.y << "," << f->tc.tid.z << ") of " << block_name(f->block);
  return o.str();
}

// ---- context switches (annotated for AddressSanitizer, which must know the stack in use)

void swap_to(Context* from, Context* to, const void* to_bottom, size_t to_size, bool from_exits) {
  ++g_switches;
#if SFEMU_ASAN
  void* fake = nullptr;
  __sanitizer_start_switch_fiber(from_exits ? nullptr : &fake, to_bottom, to_size);
  context_switch(from, to);
  __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#else
  (void)to_bottom;
  (void)to_size;
  (void)from_exits;
  context_switch(from, to);
#endif
}

// ---- the scheduler (called with exactly one fiber, the caller, running)

bool chance(Launch& L) {
  const int p = config().preempt;
  if (p <= 0) return false;
  return static_cast<int>(L.rng() % 1000) < p;
}

Fiber* random_ready(Launch& L, const Fiber* exclude) {
  std::vector<Fiber*> ready;
  for (Block* b : L.resident) {
    for (Fiber& f : b->fibers) {
      if (f.st == St::Ready && &f != exclude) ready.push_back(&f);
    }
  }
  if (ready.empty()) return nullptr;
  return ready[L.rng() % ready.size()];
}

// In-order choice: the next ready thread of the same block after `after` (round robin), else
// the first ready thread of the earliest admitted other block.
Fiber* ordered_ready(Launch& L, Block* b, int after) {
  if (b != nullptr && !b->finished) {
    const int n = static_cast<int>(b->fibers.size());
    for (int d = 1; d <= n; ++d) {
      Fiber& f = b->fibers[(after + d) % n];
      if (f.st == St::Ready) return &f;
    }
  }
  for (Block* o : L.resident) {
    if (o == b) continue;
    for (Fiber& f : o->fibers) {
      if (f.st == St::Ready) return &f;
    }
  }
  return nullptr;
}

// Random choice at a blocking point: a random ready thread of the same block, else of any block.
// (Handing over to another block costs two OS-thread wake-ups, so blocks change hands at the
// preemption points, where `preempt` picks among every resident block's threads.)
Fiber* random_ready_near(Launch& L, Block* b) {
  if (b != nullptr && !b->finished) {
    const size_t n = b->fibers.size();
    const size_t start = L.rng() % n;
    // A random starting point, then a random stride coprime to n: a random-looking order.
    size_t stride = 1 + L.rng() % n;
    while (std::gcd(stride, n) != 1) ++stride;
    for (size_t i = 0; i < n; ++i) {
      Fiber& f = b->fibers[(start + i * stride) % n];
      if (f.st == St::Ready) return &f;
    }
  }
  return random_ready(L, nullptr);
}

Fiber* choose_next(Launch& L, Fiber* me) {
  if (config().order == 1) return random_ready_near(L, me != nullptr ? me->block : nullptr);
  return ordered_ready(L, me != nullptr ? me->block : nullptr, me != nullptr ? me->index : -1);
}

void fail(Launch& L, const std::string& what) {
  if (L.failed) return;
  L.failed = true;
  std::ostringstream o;
  o << "sfemu: " << what << " [kernel launched at " << site(L.file, L.line) << ", grid (" << L.grid.x << ","
    << L.grid.y << "," << L.grid.z << "), block (" << L.block.x << "," << L.block.y << "," << L.block.z << ")]";
  L.diag = o.str();
}

std::string deadlock_report(Launch& L) {
  std::ostringstream o;
  o << "deadlock: no thread can run;";
  for (Block* b : L.resident) {
    if (b->finished) continue;
    std::map<std::string, int> waits;
    for (Fiber& f : b->fibers) {
      if (f.st == St::Barrier) waits["__syncthreads at " + site(f.file, f.line)]++;
      if (f.st == St::Warp) waits["a warp collective at " + site(f.file, f.line)]++;
    }
    o << " " << block_name(b) << ":";
    for (auto& [k, n] : waits) o << " " << n << " threads wait at " << k << ";";
    if (b->exited > 0) o << " " << b->exited << " threads exited;";
  }
  return o.str();
}

// The running fiber gives up the CPU (it is no longer Ready, or was preempted). Picks the next
// fiber and switches to it: directly when it is in the same block, otherwise through the block's
// scheduler context, whose OS thread hands the baton over.
void yield_from(Fiber* me, Fiber* next) {
  Launch& L = *g_launch;
  Block* b = me->block;
  if (!L.failed && next == nullptr) next = choose_next(L, me);
  const bool exits = me->st == St::Done;
  if (!L.failed && next == me) return;  // preempted in favour of itself
  if (!L.failed && next != nullptr && next->block == b) {
    L.running = next;
    current = &next->tc;
    swap_to(&me->ctx, &next->ctx, next->stack, kStackBytes, exits);
  } else {
    L.next = L.failed ? nullptr : next;
    swap_to(&me->ctx, &b->sched, b->sched_stack, b->sched_stack_size, exits);
  }
  // Resumed: by a fiber of this block, or by this block's scheduler context.
  L.running = me;
  current = &me->tc;
}

// Parks a fiber that failed a check: it never runs again; the launch ends.
[[noreturn]] void abandon(Fiber* me) {
  Launch& L = *g_launch;
  L.next = nullptr;
  swap_to(&me->ctx, &me->block->sched, me->block->sched_stack, me->block->sched_stack_size, true);
  std::abort();  // never resumed
}

void fiber_exit(Fiber* me) {
  Launch& L = *g_launch;
  Block* b = me->block;
  me->st = St::Done;
  --b->live;
  ++b->exited;
  if (b->exit_index < 0) b->exit_index = me->index;
  Warp& w = b->warps[me->warp];
  w.exited |= 1u << me->lane;
  if (b->bar_arrived > 0) {
    fail(L, thread_name(me) + " exited while " + std::to_string(b->bar_arrived) + " threads of its block wait at __syncthreads at " +
                site(b->bar_file, b->bar_line) + " (a barrier with exited threads)");
  }
  for (WarpOp& op : w.ops) {
    if (!op.complete && (op.mask >> me->lane & 1u)) {
      fail(L, thread_name(me) + " (lane " + std::to_string(me->lane) + ") exited while its warp waits at a collective at " +
                  site(op.file, op.line) + " with mask 0x" + [&] { std::ostringstream o; o << std::hex << op.mask; return o.str(); }() +
                  " (a warp op with missing lanes)");
    }
  }
  yield_from(me, nullptr);
  std::abort();  // a finished fiber is never resumed
}

void fiber_entry(void* arg) {
  Fiber* me = static_cast<Fiber*>(arg);
#if SFEMU_ASAN
  __sanitizer_finish_switch_fiber(nullptr, nullptr, nullptr);
#endif
  Launch& L = *g_launch;
  L.running = me;
  current = &me->tc;
  L.body(L.closure);
  fiber_exit(me);
}

// ---- shared memory: the block's thread_local storage, filled with garbage

int tls_cb(struct dl_phdr_info* info, size_t, void* data) {
  auto* addr = static_cast<uintptr_t*>(data);
  bool mine = false;
  size_t tls_size = 0;
  for (int i = 0; i < info->dlpi_phnum; ++i) {
    const ElfW(Phdr)& ph = info->dlpi_phdr[i];
    if (ph.p_type == PT_LOAD) {
      const uintptr_t lo = info->dlpi_addr + ph.p_vaddr;
      if (*addr >= lo && *addr < lo + ph.p_memsz) mine = true;
    }
    if (ph.p_type == PT_TLS) tls_size = ph.p_memsz;
  }
  if (!mine) return 0;
  if (info->dlpi_tls_data != nullptr && tls_size > 0) {
    unsigned char* p = static_cast<unsigned char*>(info->dlpi_tls_data);
    for (size_t i = 0; i < tls_size; ++i) p[i] = static_cast<unsigned char>(0xA5 ^ (i * 131));
  }
  return 1;
}

thread_local volatile unsigned char tls_anchor;  // makes this module's TLS exist in the thread

void fill_shared_with_garbage() {
  tls_anchor = 1;
  uintptr_t addr = reinterpret_cast<uintptr_t>(&fill_shared_with_garbage);
  dl_iterate_phdr(tls_cb, &addr);
}

// ---- device allocations the host side registered (sfemu_guard_add): guarded, and the memory
// weak mode tracks

struct Guarded {
  size_t bytes, guard;
  std::string name;
};
std::map<uintptr_t, Guarded> g_guarded;  // by the allocation's first byte

// Whether address a lies inside a registered allocation.
bool in_device_allocation(uintptr_t a) {
  auto it = g_guarded.upper_bound(a);
  if (it == g_guarded.begin()) return false;
  --it;
  return a < it->first + it->second.bytes;
}

// ---- weak global memory (see the top of this file). Bytes are tracked per aligned 8-byte word;
// a writer's mask says which of its bytes it wrote, so blocks writing neighbouring bytes of one
// word do not publish each other's bytes.

struct WeakWriter {
  Block* block;
  uint64_t mask;  // 0xff per byte written
};

struct WeakWord {
  uint64_t published = 0;  // what blocks that did not write a byte see of it
  uint64_t latest = 0;     // the last value written (in coherence order), as of the last switch
  std::vector<WeakWriter> writers;
  uint64_t any() const {
    uint64_t m = 0;
    for (const WeakWriter& w : writers) m |= w.mask;
    return m;
  }
  WeakWriter* find(const Block* b) {
    for (WeakWriter& w : writers) {
      if (w.block == b) return &w;
    }
    return nullptr;
  }
};

struct WeakMemory {
  bool active = false;  // a weak launch runs
  std::unordered_map<uintptr_t, WeakWord> words;
  Block* view = nullptr;  // whose view memory holds
};
WeakMemory g_weak;

inline uint64_t word_at(uintptr_t w) {
  uint64_t v;
  std::memcpy(&v, reinterpret_cast<const void*>(w), 8);
  return v;
}
// Byte by byte: the word's other bytes may belong to memory outside any kernel's reach.
inline void merge_into(uintptr_t w, uint64_t value, uint64_t mask) {
  auto* p = reinterpret_cast<unsigned char*>(w);
  for (int i = 0; i < 8; ++i) {
    if ((mask >> (8 * i)) & 0xff) p[i] = static_cast<unsigned char>(value >> (8 * i));
  }
}

// Memory as block b sees word w: its own bytes at their latest value, other writers' bytes as
// published, untracked bytes untouched.
void weak_show(uintptr_t w, WeakWord& e, const Block* b) {
  const WeakWriter* mine = e.find(b);
  const uint64_t m = mine != nullptr ? mine->mask : 0;
  merge_into(w, e.published, e.any() & ~m);
  merge_into(w, e.latest, m);
}

// The running block's writes since its view was shown, into `latest`.
void weak_capture(Block* b) {
  for (uintptr_t w : b->weak_words) {
    auto it = g_weak.words.find(w);
    if (it == g_weak.words.end()) continue;
    if (const WeakWriter* mine = it->second.find(b)) {
      it->second.latest = (it->second.latest & ~mine->mask) | (word_at(w) & mine->mask);
    }
  }
}

// Called on a block's OS thread before one of its fibers runs.
void weak_enter(Block* b) {
  if (!g_weak.active || g_weak.view == b) return;
  Block* old = g_weak.view;
  if (old != nullptr) weak_capture(old);
  for (Block* x : {old, b}) {
    if (x == nullptr) continue;
    for (uintptr_t w : x->weak_words) {
      auto it = g_weak.words.find(w);
      if (it != g_weak.words.end()) weak_show(w, it->second, b);
    }
  }
  g_weak.view = b;
}

// The block of the running fiber if p is device memory weak mode tracks. Only registered
// allocations: a kernel's stray write elsewhere must not make the emulator's own memory (stacks,
// blocks, this map) subject to view swaps; the guards report it. Unregistered memory (the inputs,
// the tensors masked SGD updates in place) stays sequentially consistent.
inline Block* weak_global_writer(const void* p) {
  if (!g_weak.active) return nullptr;
  Launch* L = g_launch;
  if (L == nullptr || L->running == nullptr) return nullptr;
  if (!in_device_allocation(reinterpret_cast<uintptr_t>(p))) return nullptr;
  return L->running->block;
}

// Makes b a pending writer of [p, p + n). `atomic`: the bytes it did not write yet first take
// their latest value, which a read-modify-write must see.
void weak_write(Block* b, const void* p, size_t n, bool atomic) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  for (uintptr_t w = a & ~uintptr_t(7); w < a + n; w += 8) {
    const uintptr_t lo = std::max(a, w), hi = std::min(a + n, w + 8);
    uint64_t mask = 0;
    for (uintptr_t i = lo; i < hi; ++i) mask |= uint64_t(0xff) << (8 * (i - w));
    auto [it, fresh] = g_weak.words.try_emplace(w);
    WeakWord& e = it->second;
    if (fresh) e.published = e.latest = word_at(w);
    WeakWriter* mine = e.find(b);
    if (atomic) merge_into(w, e.latest, mask & e.any() & ~(mine != nullptr ? mine->mask : 0));
    if (mine == nullptr) {
      e.writers.push_back(WeakWriter{b, mask});
      b->weak_words.push_back(w);
    } else {
      mine->mask |= mask;
    }
  }
}

// __threadfence: the running block's pending bytes become visible to every block. (Per block,
// not per thread: a fence after __syncthreads publishes what the whole block wrote before the
// barrier, as the PTX model's cumulativity does; a fence without the barrier is given that too.)
void weak_fence(Block* b) {
  for (uintptr_t w : b->weak_words) {
    auto it = g_weak.words.find(w);
    if (it == g_weak.words.end()) continue;
    WeakWord& e = it->second;
    WeakWriter* mine = e.find(b);
    if (mine == nullptr) continue;
    const uint64_t m = mine->mask;
    e.latest = (e.latest & ~m) | (word_at(w) & m);
    // Later writes of other blocks to these bytes get published too: one legal outcome.
    e.published = (e.published & ~m) | (e.latest & m);
    e.writers.erase(e.writers.begin() + (mine - e.writers.data()));
    if (e.writers.empty()) g_weak.words.erase(it);
  }
  b->weak_words.clear();
}

// The kernel's end: every write visible, memory the latest value of every byte.
void weak_finish() {
  if (!g_weak.active) return;
  if (g_weak.view != nullptr) weak_capture(g_weak.view);
  for (auto& [w, e] : g_weak.words) merge_into(w, e.latest, e.any());
  g_weak.words.clear();
  g_weak.view = nullptr;
  g_weak.active = false;
}

// ---- guard bytes around device allocations


// Varies with the address, so a kernel storing any one constant past the end still changes some,
// and is never below 0x80: the bytes kernels store most (0 and 1 of a mask, the zero high bytes of
// a small integer) always differ from it, so such a store is seen at every byte it touches (with
// any byte value allowed, a zero landed on a guard byte of 0 about once in a hundred runs).
inline unsigned char guard_byte(uintptr_t addr) {
  return static_cast<unsigned char>(0x80u | ((0x45u ^ (addr * 0x3Bu)) & 0x7Fu));
}

void poison_guards(uintptr_t base, const Guarded& g, bool poison) {
#if SFEMU_ASAN
  void* before = reinterpret_cast<void*>(base - g.guard);
  void* after = reinterpret_cast<void*>(base + g.bytes);
  if (poison) {
    __asan_poison_memory_region(before, g.guard);
    __asan_poison_memory_region(after, g.guard);
  } else {
    __asan_unpoison_memory_region(before, g.guard);
    __asan_unpoison_memory_region(after, g.guard);
  }
#else
  (void)base;
  (void)g;
  (void)poison;
#endif
}

// The first changed guard byte of each side of allocation `base`, as a report ("" if intact);
// restores the pattern so one overrun is reported once.
std::string check_guard(uintptr_t base, const Guarded& g) {
  poison_guards(base, g, false);
  std::ostringstream o;
  auto scan = [&](uintptr_t lo, uintptr_t hi, bool after) {
    long first = -1, last = -1;
    for (uintptr_t a = lo; a < hi; ++a) {
      auto* p = reinterpret_cast<unsigned char*>(a);
      if (*p != guard_byte(a)) {
        if (first < 0) first = static_cast<long>(a - lo);
        last = static_cast<long>(a - lo);
        *p = guard_byte(a);
      }
    }
    if (first < 0) return;
    if (!o.str().empty()) o << "; ";
    if (after) {
      o << "bytes " << first << ".." << last << " past the end of " << g.name << " (" << g.bytes
        << " bytes) were written";
    } else {
      const long n = static_cast<long>(hi - lo);
      o << "bytes " << (n - last) << ".." << (n - first) << " before the start of " << g.name << " (" << g.bytes
        << " bytes) were written";
    }
  };
  scan(base - g.guard, base, false);
  scan(base + g.bytes, base + g.bytes + g.guard, true);
  poison_guards(base, g, true);
  return o.str();
}

std::string check_guards() {
  std::string all;
  for (auto& [base, g] : g_guarded) {
    const std::string r = check_guard(base, g);
    if (!r.empty()) all += (all.empty() ? "" : "; ") + r;
  }
  return all.empty() ? all : "out-of-bounds write to device memory: " + all;
}

// ---- a block's OS thread

void admit(Launch& L);

void block_main(Launch* Lp, Block* b) {
  Launch& L = *Lp;
  fill_shared_with_garbage();
  pthread_attr_t attr;
  if (pthread_getattr_np(pthread_self(), &attr) == 0) {
    void* addr = nullptr;
    size_t size = 0;
    pthread_attr_getstack(&attr, &addr, &size);
    b->sched_stack = addr;
    b->sched_stack_size = size;
    pthread_attr_destroy(&attr);
  }
  std::unique_lock<std::mutex> lk(L.m);
  for (;;) {
    L.cv.wait(lk, [&] { return L.baton == b || L.failed || L.done; });
    if (L.failed || L.done) break;
    Fiber* f = L.next;
    lk.unlock();
    weak_enter(b);
    L.running = f;
    current = &f->tc;
    swap_to(&b->sched, &f->ctx, f->stack, kStackBytes, false);
    // Back here when a fiber of this block hands over to another block, finishes the block,
    // blocks with nothing else ready, or fails.
    lk.lock();
    Fiber* next = L.next;
    if (!L.failed && b->live == 0 && !b->finished) {
      b->finished = true;
      L.resident.erase(std::find(L.resident.begin(), L.resident.end(), b));
      // Admit the next block; it becomes a candidate at once.
      if (L.next_pending < L.pending.size()) admit(L);
      if (next == nullptr || next->block == b) next = choose_next(L, nullptr);
    }
    if (!L.failed && next == nullptr) {
      bool all_finished = L.resident.empty() && L.next_pending >= L.pending.size();
      if (all_finished) {
        L.done = true;
      } else {
        fail(L, deadlock_report(L));
      }
    }
    if (!L.failed && !L.done) {
      L.next = next;
      L.baton = next->block;
    }
    L.cv.notify_all();
    if (b->finished || L.failed || L.done) break;
  }
}

void setup_block(Launch& L, Block* b, uint3 idx) {
  b->idx = idx;
  const int n = L.nthreads;
  b->fibers.resize(n);
  b->warps.resize((n + kWarpSize - 1) / kWarpSize);
  b->live = n;
  for (int t = 0; t < n; ++t) {
    Fiber& f = b->fibers[t];
    f.block = b;
    f.index = t;
    f.lane = t % kWarpSize;
    f.warp = t / kWarpSize;
    f.tc.tid = uint3{static_cast<unsigned>(t % L.block.x), static_cast<unsigned>((t / L.block.x) % L.block.y),
                     static_cast<unsigned>(t / (L.block.x * L.block.y))};
    f.tc.bid = idx;
    f.tc.bdim = uint3{L.block.x, L.block.y, L.block.z};
    f.tc.gdim = uint3{L.grid.x, L.grid.y, L.grid.z};
    f.stack = get_stack();
    context_make(&f.ctx, f.stack, kStackBytes, &fiber_entry, &f);
    b->warps[f.warp].present |= 1u << f.lane;
  }
}

void admit(Launch& L) {
  Block* b = new Block;
  setup_block(L, b, L.pending[L.next_pending++]);
  L.all.push_back(b);
  L.resident.push_back(b);
  b->os = std::thread(block_main, &L, b);
}

}  // namespace

// ---- scheduling points and memory hooks

void fence(const char* file, int line) {
  Launch* L = g_launch;
  if (g_weak.active && L != nullptr && L->running != nullptr) weak_fence(L->running->block);
  preempt(file, line, 1);
}

void atomic_access(const void* p, size_t bytes) {
  if (Block* b = weak_global_writer(p)) weak_write(b, p, bytes, true);
}

void store_access(const void* p, size_t bytes) {
  if (Block* b = weak_global_writer(p)) weak_write(b, p, bytes, false);
}

void preempt(const char* file, int line, int) {
  Launch* L = g_launch;
  if (L == nullptr || L->running == nullptr) return;  // host code
  if (!chance(*L)) return;
  Fiber* me = L->running;
  Fiber* other = random_ready(*L, me);
  if (other == nullptr) return;
  (void)file;
  (void)line;
  yield_from(me, other);
}

void sync_block(const char* file, int line, int kind, int pred, int* result) {
  Launch& L = *g_launch;
  Fiber* me = L.running;
  Block* b = me->block;
  if (b->exited > 0) {
    fail(L, thread_name(me) + " reached __syncthreads at " + site(file, line) + " after " + std::to_string(b->exited) +
                " threads of its block exited (a barrier with exited threads; e.g. thread " +
                std::to_string(b->exit_index) + ")");
    abandon(me);
  }
  if (b->bar_arrived == 0) {
    b->bar_file = file;
    b->bar_line = line;
    b->bar_kind = kind;
    b->bar_acc = kind == 2 ? 1 : 0;
  } else if (b->bar_line != line || std::strcmp(b->bar_file, file) != 0 || b->bar_kind != kind) {
    fail(L, "__syncthreads reached at different call sites in " + block_name(b) + ": " + std::to_string(b->bar_arrived) +
                " threads wait at " + site(b->bar_file, b->bar_line) + ", " + thread_name(me) + " arrived at " +
                site(file, line));
    abandon(me);
  }
  if (kind == 1) b->bar_acc += pred;
  if (kind == 2) b->bar_acc &= pred;
  if (kind == 3) b->bar_acc |= pred;
  me->st = St::Barrier;
  me->file = file;
  me->line = line;
  if (++b->bar_arrived == b->live) {
    for (Fiber& f : b->fibers) {
      if (f.st == St::Barrier) {
        f.st = St::Ready;
        f.result = static_cast<uint64_t>(b->bar_acc);
      }
    }
    b->bar_arrived = 0;
  }
  yield_from(me, nullptr);
  if (L.failed) abandon(me);
  if (result != nullptr) *result = static_cast<int>(me->result);
}

uint64_t warp_op(const char* file, int line, int op, unsigned mask, uint64_t value, int arg, int width) {
  Launch& L = *g_launch;
  Fiber* me = L.running;
  Block* b = me->block;
  Warp& w = b->warps[me->warp];
  const unsigned bit = 1u << me->lane;
  auto hex = [](unsigned m) {
    std::ostringstream o;
    o << "0x" << std::hex << m;
    return o.str();
  };
  if (!(mask & bit)) {
    fail(L, thread_name(me) + " calls a warp collective at " + site(file, line) + " with mask " + hex(mask) +
                " that does not include its own lane " + std::to_string(me->lane));
    abandon(me);
  }
  if (mask & ~w.present) {
    fail(L, "a warp collective at " + site(file, line) + " with mask " + hex(mask) + " names lanes that do not exist in warp " +
                std::to_string(me->warp) + " of " + block_name(b) + " (present " + hex(w.present) + ")");
    abandon(me);
  }
  if (mask & w.exited) {
    fail(L, thread_name(me) + " reached a warp collective at " + site(file, line) + " with mask " + hex(mask) +
                " but lanes " + hex(mask & w.exited) + " have exited (a warp op with missing lanes)");
    abandon(me);
  }
  if (width <= 0 || width > 32 || (width & (width - 1)) != 0) {
    fail(L, "a shuffle at " + site(file, line) + " with width " + std::to_string(width) + " (must be a power of two <= 32)");
    abandon(me);
  }
  auto it = w.ops.begin();
  for (; it != w.ops.end(); ++it) {
    if (!it->complete && (it->mask & mask) != 0 && !(it->arrived & bit)) break;
  }
  if (it == w.ops.end()) {
    it = w.ops.insert(w.ops.end(), WarpOp{});
  }
  WarpOp* o = &*it;
  if (o->arrived == 0) {
    o->op = op;
    o->arg = arg;
    o->width = width;
    o->mask = mask;
    o->file = file;
    o->line = line;
  } else if (o->mask != mask || o->op != op || o->line != line || std::strcmp(o->file, file) != 0) {
    fail(L, "warp collective reached at different call sites (or with different masks) in warp " + std::to_string(me->warp) +
                " of " + block_name(b) + ": lanes " + hex(o->arrived) + " at " + site(o->file, o->line) + " mask " +
                hex(o->mask) + ", lane " + std::to_string(me->lane) + " at " + site(file, line) + " mask " + hex(mask));
    abandon(me);
  }
  o->vals[me->lane] = value;
  o->arrived |= bit;
  if (o->arrived == o->mask) {
    for (int l = 0; l < 32; ++l) {
      if (!(o->mask >> l & 1u)) continue;
      const int seg = l & ~(o->width - 1);  // first lane of this lane's width-segment
      const int in = l - seg;
      int src = l;
      switch (o->op) {
        case kShfl: src = seg + (o->arg & (o->width - 1)); break;
        case kShflUp: src = in - o->arg >= 0 ? l - o->arg : l; break;
        case kShflDown: src = in + o->arg < o->width ? l + o->arg : l; break;
        case kShflXor: src = ((l ^ o->arg) & 31); if ((src & ~(o->width - 1)) != seg) src = l; break;
        default: break;
      }
      uint64_t r = 0;
      if (o->op <= kShflXor) {
        if (!(o->mask >> src & 1u)) {
          fail(L, "a shuffle at " + site(o->file, o->line) + " reads lane " + std::to_string(src) + " outside its mask " + hex(o->mask));
          abandon(me);
        }
        r = o->vals[src];
      } else if (o->op == kBallot || o->op == kAny || o->op == kAll) {
        unsigned ballot = 0;
        for (int s = 0; s < 32; ++s) {
          if ((o->mask >> s & 1u) && o->vals[s] != 0) ballot |= 1u << s;
        }
        r = o->op == kBallot ? ballot : (o->op == kAny ? (ballot != 0) : (ballot == o->mask));
      }
      o->results[l] = r;
    }
    o->complete = true;
    o->unread = o->mask;
    for (Fiber& f : b->fibers) {
      if (f.warp == me->warp && f.st == St::Warp && (o->mask >> f.lane & 1u)) f.st = St::Ready;
    }
  } else {
    me->st = St::Warp;
    me->file = file;
    me->line = line;
    yield_from(me, nullptr);
    if (L.failed) abandon(me);
  }
  const uint64_t r = it->results[me->lane];
  it->unread &= ~bit;
  if (it->unread == 0) w.ops.erase(it);
  // Some other fiber may be ready: let the scheduler pick (collectives are scheduling points).
  return r;
}

void set_error(cudaError_t e) {
  if (g_last_error == cudaSuccess) g_last_error = e;
}

cudaError_t occupancy_result(int* blocks) {
  const int occ = config().occupancy;
  if (occ <= 0) {
    set_error(cudaErrorInvalidValue);
    return cudaErrorInvalidValue;
  }
  *blocks = occ;
  return cudaSuccess;
}

// ---- the launch

void launch_grid(const char* file, int line, dim3 grid, dim3 block, size_t smem, Body body, void* closure) {
  std::lock_guard<std::mutex> one(g_launch_mutex);
  const unsigned long long launch_no = g_launches++;
  const unsigned long long threads = 1ull * block.x * block.y * block.z;
  auto invalid = [&](const std::string& why) {
    std::ostringstream o;
    o << "sfemu: invalid launch at " << site(file, line) << ": " << why;
    g_diag = o.str();
    set_error(cudaErrorInvalidConfiguration);
  };
  if (grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.y > 65535 || grid.z > 65535 || grid.x > 0x7fffffffu) {
    std::ostringstream o;
    o << "grid (" << grid.x << "," << grid.y << "," << grid.z << ") is empty or too large";
    return invalid(o.str());
  }
  if (threads == 0 || threads > kMaxThreadsPerBlock || block.z > 64) {
    std::ostringstream o;
    o << "block (" << block.x << "," << block.y << "," << block.z << ") has " << threads
      << " threads; sm_90 allows 1 to " << kMaxThreadsPerBlock;
    return invalid(o.str());
  }
  if (smem > kMaxSharedPerBlock) {
    return invalid(std::to_string(smem) + " bytes of dynamic shared memory; sm_90 allows " +
                   std::to_string(kMaxSharedPerBlock) + " without an opt-in");
  }
  Launch L;
  L.file = file;
  L.line = line;
  L.grid = grid;
  L.block = block;
  L.body = body;
  L.closure = closure;
  L.nthreads = static_cast<int>(threads);
  L.rng.seed(config().seed * 0x9E3779B97F4A7C15ull + launch_no + 1);
  for (unsigned z = 0; z < grid.z; ++z)
    for (unsigned y = 0; y < grid.y; ++y)
      for (unsigned x = 0; x < grid.x; ++x) L.pending.push_back(uint3{x, y, z});
  if (config().block_order == 1) std::reverse(L.pending.begin(), L.pending.end());
  if (config().block_order == 2) std::shuffle(L.pending.begin(), L.pending.end(), L.rng);
  g_launch = &L;
  g_weak.active = config().weak != 0 && kInstrumented;
  const int resident = std::max(1, config().resident);
  {
    std::unique_lock<std::mutex> lk(L.m);
    while (static_cast<int>(L.resident.size()) < resident && L.next_pending < L.pending.size()) admit(L);
    Fiber* first = config().order == 1 ? random_ready(L, nullptr) : &L.resident.front()->fibers.front();
    L.next = first;
    L.baton = first->block;
    L.cv.notify_all();
    L.cv.wait(lk, [&] { return L.done || L.failed; });
    L.cv.notify_all();
  }
  for (Block* b : L.all) {
    if (b->os.joinable()) b->os.join();
  }
  weak_finish();
  if (!L.failed) {
    const std::string bad = check_guards();
    if (!bad.empty()) fail(L, bad);
  }
  for (Block* b : L.all) {
    for (Fiber& f : b->fibers) stack_pool().push_back(f.stack);
    delete b;
  }
  g_launch = nullptr;
  current = nullptr;
  if (L.failed) {
    g_diag = L.diag;
    set_error(cudaErrorLaunchFailure);
  }
}

// ---- fp16 / bf16 conversions, round to nearest even

float half_bits_to_float(unsigned short h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  const uint32_t man = h & 0x3ffu;
  uint32_t bits;
  if (exp == 0) {
    // Subnormal (or zero): man * 2^-24, exact in float.
    const float v = std::ldexp(static_cast<float>(man), -24);
    bits = __float_as_uint(v) | sign;
  } else if (exp == 31) {
    bits = sign | 0x7f800000u | (man << 13) | (man != 0 ? 0x00400000u : 0u);
  } else {
    bits = sign | ((exp + 112u) << 23) | (man << 13);
  }
  return __uint_as_float(bits);
}

unsigned short float_to_half_bits_rn(float f) {
  const uint32_t x = __float_as_uint(f);
  const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
  const uint32_t ax = x & 0x7fffffffu;
  if (ax > 0x7f800000u) return static_cast<unsigned short>(0x7fffu);  // NaN: CUDA's canonical NaN
  if (ax >= 0x477ff000u) return static_cast<unsigned short>(sign | 0x7c00u);  // rounds to inf
  if (ax < 0x38800000u) {
    // Below the smallest normal half: a multiple of 2^-24, rounded to nearest even.
    const float scaled = std::ldexp(__uint_as_float(ax), 24);  // exact
    const uint32_t m = static_cast<uint32_t>(std::nearbyint(scaled));
    return static_cast<unsigned short>(sign | m);
  }
  uint32_t h = (((ax >> 23) - 112u) << 10) | ((ax >> 13) & 0x3ffu);
  const uint32_t rem = ax & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;
  return static_cast<unsigned short>(sign | h);
}

unsigned short float_to_bf16_bits_rn(float f) {
  const uint32_t x = __float_as_uint(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) return static_cast<unsigned short>(0x7fffu);
  const uint32_t bias = 0x7fffu + ((x >> 16) & 1u);
  return static_cast<unsigned short>((x + bias) >> 16);
}

}  // namespace sfemu

// ---- runtime API

cudaError_t cudaGetLastError() {
  const cudaError_t e = sfemu::g_last_error;
  sfemu::g_last_error = cudaSuccess;
  return e;
}
cudaError_t cudaPeekAtLastError() { return sfemu::g_last_error; }
const char* cudaGetErrorString(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorLaunchFailure: return "unspecified launch failure";
    default: return "unknown error";
  }
}
cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int) {
  switch (attr) {
    case cudaDevAttrMultiProcessorCount: *value = static_cast<int>(sfemu::env_long("SFEMU_SMS", 4)); return cudaSuccess;
    case cudaDevAttrMaxThreadsPerBlock: *value = 1024; return cudaSuccess;
    case cudaDevAttrWarpSize: *value = 32; return cudaSuccess;
    case cudaDevAttrMaxSharedMemoryPerBlock: *value = static_cast<int>(sfemu::kMaxSharedPerBlock); return cudaSuccess;
    default: sfemu::set_error(cudaErrorInvalidValue); return cudaErrorInvalidValue;
  }
}
cudaError_t cudaMemsetAsync(void* p, int value, size_t bytes, cudaStream_t) {
  std::memset(p, value, bytes);
  return cudaSuccess;
}
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind, cudaStream_t) {
  std::memmove(dst, src, bytes);
  return cudaSuccess;
}
cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }
cudaError_t cudaDeviceSynchronize() { return cudaSuccess; }

extern "C" {
void sfemu_configure(unsigned long long seed, int order, int block_order, int resident, int preempt_permille,
                     int occupancy, int weak) {
  auto& c = sfemu::config();
  c.weak = weak;
  c.seed = seed;
  c.order = order;
  c.block_order = block_order;
  c.resident = resident;
  c.preempt = preempt_permille;
  c.occupancy = occupancy;
}
const char* sfemu_diagnostic() { return sfemu::g_diag.c_str(); }
int sfemu_weak_supported() { return sfemu::kInstrumented ? 1 : 0; }
void sfemu_guard_add(void* p, unsigned long long bytes, unsigned long long guard, const char* name) {
  const uintptr_t base = reinterpret_cast<uintptr_t>(p);
  sfemu::Guarded g{static_cast<size_t>(bytes), static_cast<size_t>(guard), name};
  for (uintptr_t a = base - g.guard; a < base; ++a) *reinterpret_cast<unsigned char*>(a) = sfemu::guard_byte(a);
  for (uintptr_t a = base + g.bytes; a < base + g.bytes + g.guard; ++a) {
    *reinterpret_cast<unsigned char*>(a) = sfemu::guard_byte(a);
  }
  sfemu::poison_guards(base, g, true);
  sfemu::g_guarded[base] = std::move(g);
}
// Unregisters allocation p; returns a report if its guards were overwritten since the last check.
const char* sfemu_guard_remove(void* p) {
  static std::string report;
  report.clear();
  auto it = sfemu::g_guarded.find(reinterpret_cast<uintptr_t>(p));
  if (it == sfemu::g_guarded.end()) return report.c_str();
  report = sfemu::check_guard(it->first, it->second);
  sfemu::poison_guards(it->first, it->second, false);
  sfemu::g_guarded.erase(it);
  return report.c_str();
}
void sfemu_clear_diagnostic() {
  sfemu::g_diag.clear();
  sfemu::g_last_error = cudaSuccess;
}
unsigned long long sfemu_launches() { return sfemu::g_launches; }
unsigned long long sfemu_switches() { return sfemu::g_switches; }
float sfemu_half_to_float(unsigned short h) { return sfemu::half_bits_to_float(h); }
void sfemu_half_to_float_n(const unsigned short* in, float* out, long long n) {
  for (long long i = 0; i < n; ++i) out[i] = sfemu::half_bits_to_float(in[i]);
}
void sfemu_float_to_half_n(const float* in, unsigned short* out, long long n) {
  for (long long i = 0; i < n; ++i) out[i] = sfemu::float_to_half_bits_rn(in[i]);
}
void sfemu_float_to_bf16_n(const float* in, unsigned short* out, long long n) {
  for (long long i = 0; i < n; ++i) out[i] = sfemu::float_to_bf16_bits_rn(in[i]);
}
}

// ---- GCC's ThreadSanitizer instrumentation of the kernels calls these (instead of libtsan's):
// stores feed the weak memory model; loads need nothing, since memory holds the running block's
// view; the module constructor and the rare atomic builtins (static-local guards) are plain.
extern "C" {
void __tsan_init() {}
void __tsan_func_entry(void*) {}
void __tsan_func_exit() {}
void __tsan_read1(void*) {}
void __tsan_read2(void*) {}
void __tsan_read4(void*) {}
void __tsan_read8(void*) {}
void __tsan_read16(void*) {}
void __tsan_unaligned_read2(void*) {}
void __tsan_unaligned_read4(void*) {}
void __tsan_unaligned_read8(void*) {}
void __tsan_unaligned_read16(void*) {}
void __tsan_read_range(void*, unsigned long) {}
void __tsan_write1(void* p) { sfemu::store_access(p, 1); }
void __tsan_write2(void* p) { sfemu::store_access(p, 2); }
void __tsan_write4(void* p) { sfemu::store_access(p, 4); }
void __tsan_write8(void* p) { sfemu::store_access(p, 8); }
void __tsan_write16(void* p) { sfemu::store_access(p, 16); }
void __tsan_unaligned_write2(void* p) { sfemu::store_access(p, 2); }
void __tsan_unaligned_write4(void* p) { sfemu::store_access(p, 4); }
void __tsan_unaligned_write8(void* p) { sfemu::store_access(p, 8); }
void __tsan_unaligned_write16(void* p) { sfemu::store_access(p, 16); }
void __tsan_write_range(void* p, unsigned long n) { sfemu::store_access(p, n); }
unsigned char __tsan_atomic8_load(const volatile unsigned char* a, int) { return __atomic_load_n(a, __ATOMIC_SEQ_CST); }
void __tsan_atomic8_store(volatile unsigned char* a, unsigned char v, int) { __atomic_store_n(a, v, __ATOMIC_SEQ_CST); }
}
