// A batch-norm-shaped op that computes nothing, registered in C++: CPU kernels for the forward
// and backward ops and an Autograd kernel around a C++ autograd Function. bench/bench_torch.py
// (contender noop-cpp-op) times a module calling it, to show what the registered-op structure
// costs per call once no Python runs below torch.ops (fastopt's own ops run Python there).
#include <ATen/ATen.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

namespace {

using Outputs = std::tuple<at::Tensor, at::Tensor, at::Tensor>;

Outputs forward_cpu(const at::Tensor& x, const at::Tensor& weight)
{
    int64_t channels = x.size(1);
    return {at::empty_like(x), at::empty({channels}, x.options()),
            at::empty({channels}, x.options())};
}

at::Tensor backward_cpu(const at::Tensor& grad, const at::Tensor& x) { return at::empty_like(x); }

struct NoopFunction : public torch::autograd::Function<NoopFunction> {
    static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx,
                                                  const at::Tensor& x, const at::Tensor& weight)
    {
        at::AutoDispatchBelowADInplaceOrView guard;
        static auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("fastopt_bench_cpp::bn", "")
                             .typed<decltype(forward_cpu)>();
        auto [y, mean, invstd] = op.call(x, weight);
        ctx->save_for_backward({x, weight, mean, invstd});
        ctx->mark_non_differentiable({mean, invstd});
        return {y, mean, invstd};
    }

    static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                   torch::autograd::variable_list grads)
    {
        auto saved = ctx->get_saved_variables();
        static auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("fastopt_bench_cpp::bn_backward", "")
                             .typed<decltype(backward_cpu)>();
        return {op.call(grads[0], saved[0]), at::empty_like(saved[1])};
    }
};

Outputs forward_autograd(const at::Tensor& x, const at::Tensor& weight)
{
    auto out = NoopFunction::apply(x, weight);
    return {out[0], out[1], out[2]};
}

}  // namespace

TORCH_LIBRARY(fastopt_bench_cpp, m)
{
    m.def("bn(Tensor x, Tensor weight) -> (Tensor, Tensor, Tensor)");
    m.def("bn_backward(Tensor grad, Tensor x) -> Tensor");
}

TORCH_LIBRARY_IMPL(fastopt_bench_cpp, CPU, m)
{
    m.impl("bn", &forward_cpu);
    m.impl("bn_backward", &backward_cpu);
}

TORCH_LIBRARY_IMPL(fastopt_bench_cpp, Autograd, m) { m.impl("bn", &forward_autograd); }
