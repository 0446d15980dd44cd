// Fused GRU recurrence over packed rows (see marl/fast_gru.py for the layout and the equations).
// Each step is one matmul (ATen, same BLAS as the PyTorch path), ATen's vectorized sigmoid / tanh
// in place, and fused elementwise passes over the k_t active rows: no per-step Python, no
// temporaries; the backward step is one fused pass and one matmul.
#include <torch/extension.h>

#include <cmath>
#include <cstring>
#include <vector>

namespace {

void check_inputs(const at::Tensor& gi, const at::Tensor& h0, const at::Tensor& w_hh, const at::Tensor& b_hh,
                  const std::vector<int64_t>& active) {
  TORCH_CHECK(gi.device().is_cpu(), "fast_gru extension: CPU tensors only");
  TORCH_CHECK(gi.dim() == 2 && h0.dim() == 2 && w_hh.dim() == 2 && b_hh.dim() == 1, "fast_gru extension: bad ranks");
  const int64_t H = h0.size(1);
  TORCH_CHECK(gi.size(1) == 3 * H && w_hh.size(0) == 3 * H && w_hh.size(1) == H && b_hh.size(0) == 3 * H,
              "fast_gru extension: shapes do not match hidden size ", H);
  int64_t total = 0, prev = h0.size(0);
  for (int64_t k : active) {
    TORCH_CHECK(k >= 0 && k <= prev, "fast_gru extension: active counts must be non-increasing and <= rows");
    total += k;
    prev = k;
  }
  TORCH_CHECK(total == gi.size(0), "fast_gru extension: ", gi.size(0), " packed rows for active counts summing to ", total);
}


// The elementwise passes, one row of H values each, on restrict-qualified pointers: the rows never
// overlap, and saying so lets the compiler vectorize every loop (the build targets the baseline
// x86-64 ISA, without FMA, so the vector code computes the same roundings as the scalar code).
template <typename scalar_t>
inline void candidate_row(const scalar_t* __restrict__ g, const scalar_t* __restrict__ r,
                          const scalar_t* __restrict__ q, scalar_t* __restrict__ n, int64_t H) {
  for (int64_t j = 0; j < H; ++j) n[j] = g[j] + r[j] * q[j];
}

template <typename scalar_t>
inline void update_row(const scalar_t* __restrict__ n, const scalar_t* __restrict__ z,
                       const scalar_t* __restrict__ hp, scalar_t* __restrict__ out, int64_t H) {
  for (int64_t j = 0; j < H; ++j) out[j] = n[j] + z[j] * (hp[j] - n[j]);
}

template <typename scalar_t>
inline void backward_row(const scalar_t* __restrict__ gr, const scalar_t* __restrict__ rz,
                         const scalar_t* __restrict__ n, const scalar_t* __restrict__ hn,
                         const scalar_t* __restrict__ hp, const scalar_t* __restrict__ dnext,
                         scalar_t* __restrict__ dan, scalar_t* __restrict__ dgh, scalar_t* __restrict__ out_dhz,
                         int64_t H) {
  const scalar_t* __restrict__ z_ = rz + H;
  for (int64_t j = 0; j < H; ++j) {
    const scalar_t r = rz[j], z = z_[j], nn = n[j];
    const scalar_t dh = gr[j] + dnext[j];
    const scalar_t da_n = dh * (scalar_t(1) - z) * (scalar_t(1) - nn * nn);
    const scalar_t d_r = da_n * hn[j] * (r * (scalar_t(1) - r));
    const scalar_t d_z = dh * (hp[j] - nn) * (z * (scalar_t(1) - z));
    dan[j] = da_n;
    dgh[j] = d_r;
    dgh[H + j] = d_z;
    dgh[2 * H + j] = da_n * r;
    out_dhz[j] = dh * z;
  }
}

}  // namespace

// -> hs [P,H], hn_all [P,H] (W_hn h + b_hn: the backward needs only this third of W_hh h + b_hh),
// rz_all [P,2H], n_all [P,H]
std::vector<at::Tensor> gru_forward(at::Tensor gi, at::Tensor h0, at::Tensor w_hh, at::Tensor b_hh,
                                    std::vector<int64_t> active) {
  check_inputs(gi, h0, w_hh, b_hh, active);
  gi = gi.contiguous();
  h0 = h0.contiguous();
  const int64_t P = gi.size(0), H = h0.size(1), H3 = 3 * H;
  auto hs = at::empty({P, H}, gi.options());
  auto hn_all = at::empty({P, H}, gi.options());
  auto rz_all = at::empty({P, 2 * H}, gi.options());
  auto n_all = at::empty({P, H}, gi.options());
  // One step's W_hh h + b_hh, reused at every step (its r, z thirds are spent within the step).
  auto gh_step = at::empty({active.empty() ? 0 : active[0], H3}, gi.options());
  const auto w_t = w_hh.t();
  AT_DISPATCH_FLOATING_TYPES(gi.scalar_type(), "gru_forward", [&] {
    const scalar_t* gi_p = gi.data_ptr<scalar_t>();
    scalar_t* hs_p = hs.data_ptr<scalar_t>();
    scalar_t* hn_p = hn_all.data_ptr<scalar_t>();
    const scalar_t* gh_p = gh_step.data_ptr<scalar_t>();
    scalar_t* rz_p = rz_all.data_ptr<scalar_t>();
    scalar_t* n_p = n_all.data_ptr<scalar_t>();
    at::Tensor h = h0;
    const scalar_t* hprev_p = h0.data_ptr<scalar_t>();
    int64_t a = 0;
    for (int64_t k : active) {
      if (k == 0) break;
      auto gh = gh_step.narrow(0, 0, k);
      at::addmm_out(gh, b_hh, h.narrow(0, 0, k), w_t);
      // The gates' transcendentals run through ATen's vectorized kernels (the same functions as
      // the PyTorch path), the rest in one fused pass per row.
      auto rz = rz_all.narrow(0, a, k);
      at::add_out(rz, gi.narrow(0, a, k).narrow(1, 0, 2 * H), gh.narrow(1, 0, 2 * H));
      at::sigmoid_(rz);
      for (int64_t i = 0; i < k; ++i) {
        std::memcpy(hn_p + (a + i) * H, gh_p + i * H3 + 2 * H, sizeof(scalar_t) * H);
        candidate_row(gi_p + (a + i) * H3 + 2 * H, rz_p + (a + i) * 2 * H, hn_p + (a + i) * H, n_p + (a + i) * H, H);
      }
      auto n_blk = n_all.narrow(0, a, k);
      at::tanh_(n_blk);
      for (int64_t i = 0; i < k; ++i)
        update_row(n_p + (a + i) * H, rz_p + (a + i) * 2 * H + H, hprev_p + i * H, hs_p + (a + i) * H, H);
      h = hs.narrow(0, a, k);
      hprev_p = hs_p + a * H;
      a += k;
    }
  });
  return {hs, hn_all, rz_all, n_all};
}

// -> d_gates [P,3H] (gradient of gi), dh0 [R,H], grad_w_hh [3H,H], grad_b_hh [3H]. The gradient of
// W_hh h + b_hh (d_gh) shares its r, z thirds with d_gates: once the weight gradients are taken
// from it, its n third is overwritten with the candidate's pre-activation gradient and it becomes
// d_gates (one [P,3H] buffer instead of two).
std::vector<at::Tensor> gru_backward(at::Tensor grad_hs, at::Tensor h0, at::Tensor w_hh, at::Tensor hs,
                                     at::Tensor hn_all, at::Tensor rz_all, at::Tensor n_all,
                                     std::vector<int64_t> active) {
  grad_hs = grad_hs.contiguous();
  h0 = h0.contiguous();
  const int64_t P = hs.size(0), H = hs.size(1), H3 = 3 * H, R = h0.size(0);
  const int64_t T = static_cast<int64_t>(active.size());
  std::vector<int64_t> starts(T, 0);
  for (int64_t t = 1; t < T; ++t) starts[t] = starts[t - 1] + active[t - 1];
  auto d_an = at::empty({P, H}, hs.options());
  auto d_gh = at::empty({P, H3}, hs.options());
  auto h_prev = at::empty({P, H}, hs.options());
  auto dh_next = at::zeros({R, H}, hs.options());
  auto dhz = at::empty({R, H}, hs.options());
  AT_DISPATCH_FLOATING_TYPES(hs.scalar_type(), "gru_backward", [&] {
    const scalar_t* g_p = grad_hs.data_ptr<scalar_t>();
    const scalar_t* h0_p = h0.data_ptr<scalar_t>();
    const scalar_t* hs_p = hs.data_ptr<scalar_t>();
    const scalar_t* hn_p = hn_all.data_ptr<scalar_t>();
    const scalar_t* rz_p = rz_all.data_ptr<scalar_t>();
    const scalar_t* n_p = n_all.data_ptr<scalar_t>();
    scalar_t* dan_p = d_an.data_ptr<scalar_t>();
    scalar_t* dgh_p = d_gh.data_ptr<scalar_t>();
    scalar_t* hp_p = h_prev.data_ptr<scalar_t>();
    scalar_t* dn_p = dh_next.data_ptr<scalar_t>();
    scalar_t* dhz_p = dhz.data_ptr<scalar_t>();
    // h_{t-1} of every packed row: the first k_t rows of the previous step (h0 at t = 0).
    for (int64_t t = 0; t < T; ++t) {
      const scalar_t* src = t == 0 ? h0_p : hs_p + starts[t - 1] * H;
      std::memcpy(hp_p + starts[t] * H, src, sizeof(scalar_t) * active[t] * H);
    }
    for (int64_t t = T - 1; t >= 0; --t) {
      const int64_t k = active[t], a = starts[t];
      if (k == 0) continue;
      for (int64_t i = 0; i < k; ++i) {
        const int64_t row = a + i;
        backward_row(g_p + row * H, rz_p + row * 2 * H, n_p + row * H, hn_p + row * H, hp_p + row * H,
                     dn_p + i * H, dan_p + row * H, dgh_p + row * H3, dhz_p + i * H, H);
      }
      auto dn = dh_next.narrow(0, 0, k);
      at::addmm_out(dn, dhz.narrow(0, 0, k), d_gh.narrow(0, a, k), w_hh);
    }
  });
  auto grad_w_hh = at::mm(d_gh.t(), h_prev);
  auto grad_b_hh = d_gh.sum(0);
  d_gh.narrow(1, 2 * H, H).copy_(d_an);
  return {d_gh, dh_next, grad_w_hh, grad_b_hh};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("gru_forward", &gru_forward, "packed GRU recurrence, forward");
  m.def("gru_backward", &gru_backward, "packed GRU recurrence, backward");
}
