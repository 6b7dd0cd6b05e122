/* One NCE direction's row work (trainer/model/cpu/nce.c is the reference): the
 * scores come from a GEMM; one block per source row i computes the reg
 * term, clips, and writes the gradient of the clipped scores for the NCE,
 * JSD or DV objective. Fixed-tree reductions: deterministic. */
#include "launch_internal.cuh"

enum { NCE_THREADS = 256 };

/* S, dS (Bs, B*L): row si = source si, image first + si of the B, against
 * every target location; the means divide by the B images' counts
 * (amdim_cpu_nce_direction_part). */
template <typename T>
static __global__ void nce_rows_kernel(float *S, float *dS, void *dS_act, int first, int B, int L, float tclip, int objective,
                                float wloss, float wreg, double *rows)
{
    AMDIM_SHARED(double, sh, [NCE_THREADS]);
    int si = blockIdx.x, i = first + si;
    size_t BL = (size_t)B * L, n = (size_t)B * BL, lo = (size_t)i * L, hi = lo + L; /* positives [lo, hi) */
    float *t = S + (size_t)si * BL, *g = dS + (size_t)si * BL;
    double sq = 0, loss = 0;
    for (size_t k = threadIdx.x; k < BL; k += blockDim.x) {
        float s = t[k];
        sq += (double)s * s;
        g[k] = (float)(wreg * AMDIM_NCE_REG * 2.0 * s / (double)n);
        t[k] = amdim_tanh_clip(s, tclip);
    }
    sq = block_sum(sq, sh); /* also orders the writes above before the reads below */
    if (objective == AMDIM_CUDA_NCE) {
        double M = -1e30, negsum = 0, inv = 0;
        for (size_t k = threadIdx.x; k < BL; k += blockDim.x)
            if ((k < lo || k >= hi) && t[k] > M)
                M = t[k];
        M = block_max(M, sh);
        for (size_t k = threadIdx.x; k < BL; k += blockDim.x)
            if (k < lo || k >= hi)
                negsum += exp(t[k] - M);
        negsum = block_sum(negsum, sh);
        for (int l = threadIdx.x; l < L; l += blockDim.x) {
            double p = t[lo + l], ep = exp(p - M), den = ep + negsum;
            loss += -(p - M - log(den));
            inv += 1.0 / den;
            double d = amdim_nce_pos_grad(ep / den, (double)BL, wloss);
            g[lo + l] += (float)(d * amdim_tanh_clip_grad(p, tclip));
        }
        loss = block_sum(loss, sh);
        inv = block_sum(inv, sh);
        for (size_t k = threadIdx.x; k < BL; k += blockDim.x)
            if (k < lo || k >= hi) {
                double d = amdim_nce_neg_grad(t[k], M, inv, (double)BL, wloss);
                g[k] += (float)(d * amdim_tanh_clip_grad(t[k], tclip));
            }
    } else if (objective == AMDIM_CUDA_JSD) {
        double npos = (double)BL, nneg = (double)B * (B - 1) * L;
        for (size_t k = threadIdx.x; k < BL; k += blockDim.x) {
            double x = t[k], d;
            if (k >= lo && k < hi) {
                loss -= (log(2.0) - amdim_softplus(-x)) / npos;
                d = -amdim_sigmoid(-x) / npos;
            } else {
                loss += (amdim_softplus(-x) + x - log(2.0)) / nneg;
                d = amdim_sigmoid(x) / nneg;
            }
            g[k] += (float)(wloss * d * amdim_tanh_clip_grad(x, tclip));
        }
        loss = block_sum(loss, sh);
    } else { /* DV */
        double M = -1e30, sum = 0, mpos = 0, count = (double)(B - 1) * L;
        for (size_t k = threadIdx.x; k < BL; k += blockDim.x)
            if ((k < lo || k >= hi) && t[k] > M)
                M = t[k];
        M = block_max(M, sh);
        for (size_t k = threadIdx.x; k < BL; k += blockDim.x)
            if (k < lo || k >= hi)
                sum += exp(t[k] - M);
        sum = block_sum(sum, sh);
        for (int l = threadIdx.x; l < L; l += blockDim.x)
            mpos += t[lo + l];
        mpos = block_sum(mpos, sh) / L;
        double lse = M + log(sum);
        loss = (lse - log(count) - mpos) / B;
        for (size_t k = threadIdx.x; k < BL; k += blockDim.x) {
            double d = k >= lo && k < hi ? -1.0 / L / B : exp(t[k] - lse) / B;
            g[k] += (float)(wloss * d * amdim_tanh_clip_grad(t[k], tclip));
        }
    }
    if (dS_act) { /* every thread's writes (the positives' by another mapping) done first */
        __syncthreads();
        for (size_t k = threadIdx.x; k < BL; k += blockDim.x)
            st<T>(dS_act, (size_t)si * BL + k, g[k]);
    }
    if (threadIdx.x == 0) {
        rows[2 * (size_t)si] = loss;
        rows[2 * (size_t)si + 1] = sq;
    }
}

/* one thread per (i, ch) */
template <typename T> static __global__ void rows_kernel(const void *a, const int32_t *idx, int B, int R, int scatter, void *b)
{
    size_t n = (size_t)B * R;
    GRID_STRIDE(j, n)
    {
        size_t i = j / R, ch = j % R, row = i * 25 + idx[i];
        if (scatter)
            st<T>(b, row * R + ch, ld<T>(b, row * R + ch) + ld<T>(a, j));
        else
            st<T>(b, j, ld<T>(a, row * R + ch));
    }
}

extern "C" int amdim_nce_rows_cuda(const amdim_cuda_ctx *c, float *S, float *dS, void *dS_act, int Bs, int first, int B,
                             int L, float tclip, int objective, float wloss, float wreg, double *rows)
{
    if (!c->bf16)
        dS_act = NULL; /* the float dS is the GEMMs' operand */
    LAUNCH_ACT(c, nce_rows_kernel, Bs, NCE_THREADS, S, dS, dS_act, first, B, L, tclip, objective, wloss, wreg, rows);
    note(c, "NCE rows", (double)Bs * B * L * (12.0 + (dS_act ? act_es(c) : 0.0)) + 16.0 * Bs);
    return launch_check(c, "amdim_nce_rows_cuda");
}

extern "C" int amdim_gather_rows_cuda(const amdim_cuda_ctx *c, const void *r5, const int32_t *idx, int B, int R, void *src)
{
    size_t n = (size_t)B * R;
    LAUNCH_ACT(c, rows_kernel, grid_for(n), AMDIM_THREADS, r5, idx, B, R, 0, src);
    note(c, "r5 source rows", 2.0 * n * act_es(c) + 4.0 * B);
    return launch_check(c, "amdim_gather_rows_cuda");
}

extern "C" int amdim_scatter_rows_add_cuda(const amdim_cuda_ctx *c, const void *src, const int32_t *idx, int B, int R,
                                     void *r5)
{
    size_t n = (size_t)B * R;
    LAUNCH_ACT(c, rows_kernel, grid_for(n), AMDIM_THREADS, src, idx, B, R, 1, r5);
    note(c, "r5 source rows", 3.0 * n * act_es(c) + 4.0 * B);
    return launch_check(c, "amdim_scatter_rows_add_cuda");
}
