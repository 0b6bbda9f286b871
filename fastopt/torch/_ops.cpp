// C++ kernels for fastopt's batch-norm ops on CPU tensors (fastopt/torch/_ops.py defines the ops
// and keeps the Python kernels; fastopt/torch/_cpp.py compiles this file on first use and calls
// install()). They take the calls whose Python glue would cost more than the kernel:
//
// - AutogradCPU kernels for fastopt::batch_norm and fastopt::batch_norm_backward: the forward's
//   graph node is a C++ autograd Function; a backward that records a graph (a double backward)
//   goes to the Python autograd kernel, whose formulas are differentiable torch operations.
// - the CPU work of a small, well-formed call (float32/float64, contiguous or channels-last,
//   under SMALL_BYTES, backend "auto"/"cython" resolving to the Cython kernels): checks, output
//   allocation, the Cython address entry points (fastopt/batchnorm/_cython.pyx: forward_addr,
//   backward_addr, through __pyx_capi__) and the running-statistics update.
//
// Everything else (other backends, layouts, devices, large tensors, and every call that an input
// check would reject) goes to the Python kernels unchanged, so input validation and its error
// messages stay in one place (_ops.py) and both paths give the same bits.
#include <torch/extension.h>

#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/DispatchKeySet.h>
#include <torch/csrc/autograd/custom_function.h>

#include <atomic>
#include <cmath>
#include <cstdint>
#include <optional>
#include <string>
#include <tuple>

namespace {

namespace py = pybind11;
using at::Tensor;
using OptTensor = std::optional<Tensor>;
using ForwardOut = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor>;
using BackwardOut = std::tuple<Tensor, Tensor, Tensor>;

// fastopt/batchnorm/_cython.pxd: forward_addr, backward_addr
using ForwardAddr = int (*)(size_t, size_t, Py_ssize_t, Py_ssize_t, Py_ssize_t, int, size_t,
                            size_t, int, size_t, size_t, double, double*, size_t, size_t, int,
                            Py_ssize_t, int, int, int);
using BackwardAddr = int (*)(size_t, size_t, Py_ssize_t, Py_ssize_t, Py_ssize_t, int, size_t,
                             size_t, int, size_t, int, size_t, size_t, size_t, int, Py_ssize_t,
                             int, int, int);

// Their signatures as Cython names the __pyx_capi__ capsules: install() refuses other ones.
constexpr const char* FORWARD_ADDR_SIGNATURE =
    "int (size_t, size_t, Py_ssize_t, Py_ssize_t, Py_ssize_t, int, size_t, size_t, int, size_t, "
    "size_t, double, double *, size_t, size_t, int, Py_ssize_t, int, int, int)";
constexpr const char* BACKWARD_ADDR_SIGNATURE =
    "int (size_t, size_t, Py_ssize_t, Py_ssize_t, Py_ssize_t, int, size_t, size_t, int, size_t, "
    "int, size_t, size_t, size_t, int, Py_ssize_t, int, int, int)";

// Below this many bytes of x the Python glue costs more than the kernel; larger calls keep the
// Python kernels (their outputs come from numpy's allocator, which asks for huge pages).
constexpr int64_t SMALL_BYTES = int64_t(1) << 21;

struct State {
    ForwardAddr forward_addr = nullptr;
    BackwardAddr backward_addr = nullptr;
    py::object plan;                       // _ops._cpp_plan
    py::object cpu_forward, cpu_backward;  // _ops._batch_norm_cpu, _batch_norm_backward_cpu
    py::object autograd_forward, autograd_backward;  // the Python autograd kernels
    std::atomic<bool> enabled{true};
    std::atomic<int64_t> forward_calls{0}, backward_calls{0};  // calls the C++ CPU work ran
};

// Never freed: the Python objects must not be released after the interpreter has gone.
State* state = nullptr;

struct WorkPlan {
    bool per_channel;
    int64_t n_chunks;
    int n_threads;
    bool stream;
    int row_block;
};

// The plan of a call on the Cython kernels, or nothing when `backend` resolves to another one.
std::optional<WorkPlan> plan_for(int64_t outer, int64_t C, int64_t inner, int64_t itemsize,
                                 int n_arrays, c10::string_view backend)
{
    py::gil_scoped_acquire gil;
    py::object p = state->plan(outer, C, inner, itemsize, n_arrays, std::string(backend));
    if (p.is_none()) return std::nullopt;
    auto t = p.cast<std::tuple<bool, int64_t, int, bool, int>>();
    return WorkPlan{std::get<0>(t), std::get<1>(t), std::get<2>(t), std::get<3>(t),
                    std::get<4>(t)};
}

// Releases the GIL for the kernel when the caller holds it.
struct ReleasedGil {
    PyThreadState* saved = nullptr;
    ReleasedGil()
    {
        if (PyGILState_Check()) saved = PyEval_SaveThread();
    }
    ~ReleasedGil()
    {
        if (saved) PyEval_RestoreThread(saved);
    }
};

// (outer, C, inner) of x's memory when it is C-contiguous (channel axis 1) or channels-last
// (the dimensions (0, 2, ..., 1) contiguous); nothing for other strides.
std::optional<std::tuple<int64_t, int64_t, int64_t>> memory_shape(const Tensor& x)
{
    int64_t C = x.size(1), n = x.numel();
    if (x.is_contiguous()) return std::make_tuple(x.size(0), C, n / (x.size(0) * C));
    std::vector<int64_t> perm{0};
    for (int64_t d = 2; d < x.dim(); ++d) perm.push_back(d);
    perm.push_back(1);
    if (x.permute(perm).is_contiguous()) return std::make_tuple(n / C, C, int64_t(1));
    return std::nullopt;
}

bool supported_dtype(const Tensor& t)
{
    return t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble;
}

bool small_input(const Tensor& x)
{
    return x.device().is_cpu() && supported_dtype(x) && x.dim() >= 2 && x.numel() > 0 &&
           x.numel() * int64_t(x.element_size()) < SMALL_BYTES;
}

bool channel_vector(const OptTensor& t, const Tensor& x)
{
    return !t.has_value() || (t->dim() == 1 && t->size(0) == x.size(1) &&
                              t->scalar_type() == x.scalar_type() && t->device().is_cpu() &&
                              t->is_contiguous());
}

size_t address(const OptTensor& t) { return t.has_value() ? size_t(t->data_ptr()) : 0; }

bool cython_backend(c10::string_view backend) { return backend == "auto" || backend == "cython"; }

// ------------------------------------------------------------------ CPU work

ForwardOut forward_python(const Tensor& x, const OptTensor& weight, const OptTensor& bias,
                          const OptTensor& running_mean, const OptTensor& running_var,
                          bool training, double momentum, double eps, c10::string_view backend)
{
    py::gil_scoped_acquire gil;
    return state
        ->cpu_forward(x, weight, bias, running_mean, running_var, training, momentum, eps,
                      std::string(backend))
        .cast<ForwardOut>();
}

// (1 - m) * running + m * batch, rounded as fastopt.batchnorm.api.running_update rounds it:
// the decay in the buffer's dtype, the float64 batch term rounded to it before the sum.
template <typename T>
void running_update(const T* rm, const T* rv, const double* mean, const double* var, double m,
                    int64_t n, int64_t C, T* new_rm, T* new_rv)
{
    const T keep = T(1.0 - m);
    const double unbiased = double(n) / double(n - 1);
    for (int64_t c = 0; c < C; ++c) {
        new_rm[c] = T(rm[c] * keep) + T(m * mean[c]);
        new_rv[c] = T(rv[c] * keep) + T(m * var[c] * unbiased);
    }
}

ForwardOut forward_cpu(const Tensor& x, const OptTensor& weight, const OptTensor& bias,
                       const OptTensor& running_mean, const OptTensor& running_var,
                       bool training, double momentum, double eps, c10::string_view backend)
{
    auto python = [&] {
        return forward_python(x, weight, bias, running_mean, running_var, training, momentum,
                              eps, backend);
    };
    if (!state->enabled || !cython_backend(backend) || !small_input(x)) return python();
    auto shape = memory_shape(x);
    bool valid = shape && channel_vector(weight, x) && channel_vector(bias, x) &&
                 channel_vector(running_mean, x) && channel_vector(running_var, x) &&
                 running_mean.has_value() == running_var.has_value() &&
                 (training || running_mean.has_value()) &&
                 (!training || x.numel() != x.size(1)) && std::isfinite(eps) && eps > 0 &&
                 momentum >= 0 && momentum <= 1;
    if (!valid) return python();  // the Python kernel copies, or raises the error
    auto [outer, C, inner] = *shape;
    auto plan = plan_for(outer, C, inner, x.element_size(), 2, backend);
    if (!plan) return python();
    bool is_f32 = x.scalar_type() == at::kFloat;
    Tensor y = at::empty_like(x), mean = at::empty({C}, x.options()),
           invstd = at::empty({C}, x.options());
    std::vector<double> stats(size_t(3 * C));
    const OptTensor& rm = training ? std::nullopt : running_mean;
    const OptTensor& rv = training ? std::nullopt : running_var;
    int status;
    {
        ReleasedGil released;
        status = state->forward_addr(size_t(x.data_ptr()), size_t(y.data_ptr()), outer, C, inner,
                                     is_f32, address(weight), address(bias), training,
                                     address(rm), address(rv), eps, stats.data(),
                                     size_t(mean.data_ptr()), size_t(invstd.data_ptr()),
                                     plan->per_channel, plan->n_chunks, plan->n_threads,
                                     plan->stream, plan->row_block);
    }
    if (status != 0) return python();  // out of memory: the Python kernel retries or raises
    ++state->forward_calls;
    if (!(training && running_mean.has_value())) {
        Tensor none = at::empty({0}, x.options());
        return {y, mean, invstd, none, at::empty({0}, x.options())};
    }
    Tensor new_rm = at::empty_like(*running_mean), new_rv = at::empty_like(*running_var);
    int64_t n = outer * inner;
    if (is_f32)
        running_update(running_mean->data_ptr<float>(), running_var->data_ptr<float>(),
                       stats.data(), stats.data() + C, momentum, n, C, new_rm.data_ptr<float>(),
                       new_rv.data_ptr<float>());
    else
        running_update(running_mean->data_ptr<double>(), running_var->data_ptr<double>(),
                       stats.data(), stats.data() + C, momentum, n, C, new_rm.data_ptr<double>(),
                       new_rv.data_ptr<double>());
    return {y, mean, invstd, new_rm, new_rv};
}

BackwardOut backward_cpu(const Tensor& grad_out, const Tensor& x, const OptTensor& weight,
                         const Tensor& mean, const Tensor& invstd, bool training,
                         c10::string_view backend)
{
    auto python = [&] {
        py::gil_scoped_acquire gil;
        return state->cpu_backward(grad_out, x, weight, mean, invstd, training,
                                   std::string(backend))
            .cast<BackwardOut>();
    };
    if (!state->enabled || !cython_backend(backend) || !small_input(x)) return python();
    auto shape = memory_shape(x);
    auto stats_ok = [&](const Tensor& t) {
        return t.dim() == 1 && t.size(0) == x.size(1) && supported_dtype(t) &&
               t.scalar_type() == mean.scalar_type() && t.device().is_cpu() && t.is_contiguous();
    };
    bool valid = shape && grad_out.device().is_cpu() &&
                 grad_out.scalar_type() == x.scalar_type() && grad_out.sizes() == x.sizes() &&
                 channel_vector(weight, x) && stats_ok(mean) && stats_ok(invstd);
    if (!valid) return python();
    // a gradient in other strides (expanded by a sum(), say) is copied once into x's layout,
    // as the Python kernel does
    Tensor g = grad_out.strides() == x.strides() ? grad_out : at::empty_like(x).copy_(grad_out);
    auto [outer, C, inner] = *shape;
    auto plan = plan_for(outer, C, inner, x.element_size(), 3, backend);
    if (!plan) return python();
    Tensor dx = at::empty_like(x), dw = at::empty({C}, x.options()),
           db = at::empty({C}, x.options());
    int status;
    {
        ReleasedGil released;
        status = state->backward_addr(
            size_t(g.data_ptr()), size_t(x.data_ptr()), outer, C, inner,
            x.scalar_type() == at::kFloat, size_t(mean.data_ptr()), size_t(invstd.data_ptr()),
            mean.scalar_type() == at::kFloat, address(weight), training, size_t(dx.data_ptr()),
            size_t(dw.data_ptr()), size_t(db.data_ptr()), plan->per_channel, plan->n_chunks,
            plan->n_threads, plan->stream, plan->row_block);
    }
    if (status != 0) return python();
    ++state->backward_calls;
    return {dx, dw, db};
}

// ------------------------------------------------------------------ autograd

c10::DispatchKeySet below_autograd(c10::DispatchKeySet ks)
{
    return ks & c10::after_autograd_keyset;
}

const c10::TypedOperatorHandle<ForwardOut(const Tensor&, const OptTensor&, const OptTensor&,
                                          const OptTensor&, const OptTensor&, bool, double,
                                          double, c10::string_view)>&
forward_op()
{
    static auto op = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("fastopt::batch_norm", "")
                         .typed<ForwardOut(const Tensor&, const OptTensor&, const OptTensor&,
                                           const OptTensor&, const OptTensor&, bool, double,
                                           double, c10::string_view)>();
    return op;
}

const c10::TypedOperatorHandle<BackwardOut(const Tensor&, const Tensor&, const OptTensor&,
                                           const Tensor&, const Tensor&, bool,
                                           c10::string_view)>&
backward_op()
{
    static auto op = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("fastopt::batch_norm_backward", "")
                         .typed<BackwardOut(const Tensor&, const Tensor&, const OptTensor&,
                                            const Tensor&, const Tensor&, bool,
                                            c10::string_view)>();
    return op;
}

// The op below autograd: the CPU work directly when that is the kernel (no fake tensors, modes
// or functionalization in the key set), else the dispatcher.
ForwardOut forward_below(c10::DispatchKeySet ks, const Tensor& x, const OptTensor& weight,
                         const OptTensor& bias, const OptTensor& running_mean,
                         const OptTensor& running_var, bool training, double momentum,
                         double eps, c10::string_view backend)
{
    auto below = below_autograd(ks);
    if (below.highestPriorityTypeId() == c10::DispatchKey::CPU)
        return forward_cpu(x, weight, bias, running_mean, running_var, training, momentum, eps,
                           backend);
    return forward_op().redispatch(below, x, weight, bias, running_mean, running_var, training,
                                   momentum, eps, backend);
}

OptTensor optional(const Tensor& t) { return t.defined() ? OptTensor(t) : std::nullopt; }

Tensor or_undefined(const OptTensor& t) { return t.has_value() ? *t : Tensor(); }

// [1, C, 1, ...] in symbolic sizes (torch.compile traces the backward with symbolic shapes)
std::vector<c10::SymInt> channel_shape(const Tensor& x)
{
    std::vector<c10::SymInt> shape(size_t(x.dim()), c10::SymInt(1));
    shape[1] = x.sym_size(1);
    return shape;
}

// The forward's graph node; the same formulas as _ops.py's _forward_backward. Its outputs are
// the differentiable ones only (y, and mean and invstd in training mode): the others (the new
// running statistics, eval mode's mean and invstd) leave through `all`, outside the graph, so
// the node has no non-differentiable outputs to mark (compiled autograd refuses nodes that do).
struct BatchNormFunction : public torch::autograd::Function<BatchNormFunction> {
    static torch::autograd::variable_list forward(
        torch::autograd::AutogradContext* ctx, ForwardOut* all, c10::DispatchKeySet ks,
        const Tensor& x, const OptTensor& weight, const OptTensor& bias,
        const OptTensor& running_mean, const OptTensor& running_var, bool training,
        double momentum, double eps, const std::string& backend)
    {
        *all = forward_below(ks, x, weight, bias, running_mean, running_var, training, momentum,
                             eps, backend);
        const auto& [y, mean, invstd, new_rm, new_rv] = *all;
        ctx->set_materialize_grads(false);
        ctx->save_for_backward({x, or_undefined(weight), mean, invstd});
        ctx->saved_data["has_bias"] = bias.has_value();
        ctx->saved_data["training"] = training;
        ctx->saved_data["backend"] = backend;
        if (training) return {y, mean, invstd};
        return {y};
    }

    static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                   torch::autograd::variable_list grads)
    {
        auto saved = ctx->get_saved_variables();
        const Tensor &x = saved[0], &weight = saved[1], &mean = saved[2], &invstd = saved[3];
        bool training = ctx->saved_data["training"].toBool();
        std::string backend = ctx->saved_data["backend"].toStringRef();
        const Tensor& grad_y = grads[0];
        Tensor grad_mean = training ? grads[1] : Tensor();
        Tensor grad_invstd = training ? grads[2] : Tensor();
        Tensor dx, dw, db;
        if (grad_y.defined())
            std::tie(dx, dw, db) =
                backward_op().call(grad_y, x, optional(weight), mean, invstd, training, backend);
        if (grad_mean.defined() || grad_invstd.defined()) {
            // mean = sum(x)/n and invstd = (var + eps)^(-1/2): d mean/dx = 1/n,
            // d invstd/dx = -invstd^3 (x - mean)/n.
            auto shape = channel_shape(x);
            c10::Scalar n(x.sym_numel() / x.sym_size(1));
            Tensor extra = at::zeros_like(x);
            if (grad_mean.defined()) extra = extra + (grad_mean / n).view_symint(shape);
            if (grad_invstd.defined())
                extra = extra - (grad_invstd * invstd.pow(3) / n).view_symint(shape) *
                                    (x - mean.view_symint(shape));
            dx = dx.defined() ? dx + extra : extra;
        }
        if (!dx.defined()) dx = at::zeros_like(x);
        // one entry per argument of apply() (all, ks, x, weight, bias, ...), undefined for the
        // arguments that are not tensors (an absent weight or bias among them)
        torch::autograd::variable_list out(11);
        out[2] = dx;
        if (weight.defined()) out[3] = dw;
        if (ctx->saved_data["has_bias"].toBool()) out[4] = db;
        return out;
    }
};

// An optional tensor that holds an undefined tensor (possible from C++ callers) as absent.
OptTensor present(const OptTensor& t) { return t.has_value() && t->defined() ? t : std::nullopt; }

bool needs_graph(std::initializer_list<const Tensor*> tensors)
{
    if (!at::GradMode::is_enabled()) return false;
    for (const Tensor* t : tensors)
        if (t->defined() && t->requires_grad()) return true;
    return false;
}

ForwardOut forward_autograd(c10::DispatchKeySet ks, const Tensor& x, const OptTensor& weight_,
                            const OptTensor& bias_, const OptTensor& running_mean_,
                            const OptTensor& running_var_, bool training, double momentum,
                            double eps, c10::string_view backend)
{
    OptTensor weight = present(weight_), bias = present(bias_);
    OptTensor running_mean = present(running_mean_), running_var = present(running_var_);
    if (!state->enabled) {
        py::gil_scoped_acquire gil;
        return state
            ->autograd_forward(ks, x, weight, bias, running_mean, running_var, training,
                               momentum, eps, std::string(backend))
            .cast<ForwardOut>();
    }
    Tensor w = or_undefined(weight), b = or_undefined(bias);
    if (!needs_graph({&x, &w, &b}))
        return forward_below(ks, x, weight, bias, running_mean, running_var, training, momentum,
                             eps, backend);
    ForwardOut all;
    auto out = BatchNormFunction::apply(&all, ks, x, weight, bias, running_mean, running_var,
                                        training, momentum, eps, std::string(backend));
    if (training) return {out[0], out[1], out[2], std::get<3>(all), std::get<4>(all)};
    return {out[0], std::get<1>(all), std::get<2>(all), std::get<3>(all), std::get<4>(all)};
}

BackwardOut backward_autograd(c10::DispatchKeySet ks, const Tensor& grad_out, const Tensor& x,
                              const OptTensor& weight_, const Tensor& mean, const Tensor& invstd,
                              bool training, c10::string_view backend)
{
    OptTensor weight = present(weight_);
    Tensor w = or_undefined(weight);
    if (!state->enabled || needs_graph({&grad_out, &x, &w, &mean, &invstd})) {
        // a graph of the backward (double backward): the Python Function's exact formulas
        py::gil_scoped_acquire gil;
        return state
            ->autograd_backward(ks, grad_out, x, weight, mean, invstd, training,
                                std::string(backend))
            .cast<BackwardOut>();
    }
    auto below = below_autograd(ks);
    if (below.highestPriorityTypeId() == c10::DispatchKey::CPU)
        return backward_cpu(grad_out, x, weight, mean, invstd, training, backend);
    return backward_op().redispatch(below, grad_out, x, weight, mean, invstd, training, backend);
}

template <typename F>
F capsule_pointer(const py::object& capsule, const char* signature)
{
    void* f = PyCapsule_GetPointer(capsule.ptr(), signature);  // NULL for another signature
    if (f == nullptr) throw py::error_already_set();
    return reinterpret_cast<F>(f);
}

void install(py::object forward_addr, py::object backward_addr, py::object plan,
             py::object cpu_forward, py::object cpu_backward, py::object autograd_forward,
             py::object autograd_backward)
{
    TORCH_CHECK(state == nullptr, "fastopt's C++ batch-norm kernels are installed already");
    auto* s = new State();
    s->forward_addr = capsule_pointer<ForwardAddr>(forward_addr, FORWARD_ADDR_SIGNATURE);
    s->backward_addr = capsule_pointer<BackwardAddr>(backward_addr, BACKWARD_ADDR_SIGNATURE);
    s->plan = plan;
    s->cpu_forward = cpu_forward;
    s->cpu_backward = cpu_backward;
    s->autograd_forward = autograd_forward;
    s->autograd_backward = autograd_backward;
    state = s;
    // AutogradCPU, more specific than the Python kernels' Autograd alias: CPU tensors come here,
    // others (CUDA) keep the Python autograd kernels; nothing is overridden.
    static auto* lib = new torch::Library(torch::Library::IMPL, "fastopt",
                                          c10::DispatchKey::AutogradCPU, __FILE__, __LINE__);
    lib->impl("batch_norm", TORCH_FN(forward_autograd));
    lib->impl("batch_norm_backward", TORCH_FN(backward_autograd));
}

void set_enabled(bool enabled)
{
    TORCH_CHECK(state != nullptr, "fastopt's C++ batch-norm kernels are not installed");
    state->enabled = enabled;
}

bool enabled() { return state != nullptr && state->enabled; }

std::tuple<int64_t, int64_t> calls()
{
    TORCH_CHECK(state != nullptr, "fastopt's C++ batch-norm kernels are not installed");
    return {state->forward_calls.load(), state->backward_calls.load()};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m)
{
    m.def("install", &install, "Register the C++ kernels (once per process).");
    m.def("set_enabled", &set_enabled,
          "False: every call goes to the Python kernels (tests, benchmarks).");
    m.def("enabled", &enabled, "Whether the C++ kernels are installed and enabled.");
    m.def("calls", &calls, "(forward, backward) calls whose CPU work ran in C++ (tests).");
}
