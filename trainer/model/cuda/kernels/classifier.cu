/* The online classifiers' loss: one block per row of logits (n, classes),
 * fixed-tree reductions, per-row results for the host to add in order. */
#include "launch_internal.cuh"

enum { CLS_THREADS = 256 };

template <typename T>
static __global__ void classifier_kernel(const float *logits, int n_all, int classes, const int32_t *labels,
                                  const double *inv_valid_p, float scale, float *dlogits, void *dlogits_act,
                                  double *rows)
{
    AMDIM_SHARED(double, sh, [CLS_THREADS]);
    double inv_valid = *inv_valid_p;
    int i = blockIdx.x;
    const float *l = logits + (size_t)i * classes;
    float *dl = dlogits ? dlogits + (size_t)i * classes : NULL;
    double inv_all = 1.0 / ((double)n_all * classes), reg = 0;
    for (int k = threadIdx.x; k < classes; k += blockDim.x) {
        reg += (double)l[k] * l[k];
        if (dl)
            dl[k] = (float)(scale * amdim_cls_reg_grad(l[k], inv_all));
    }
    reg = block_sum(reg, sh);
    int y = labels[i];
    double xent = 0, hit = 0;
    if (y >= 0 && y < classes) {
        double zmax = -1e30;
        for (int k = threadIdx.x; k < classes; k += blockDim.x) {
            double z = amdim_cls_clip(l[k]);
            zmax = z > zmax ? z : zmax;
        }
        zmax = block_max(zmax, sh);
        double sum = 0;
        for (int k = threadIdx.x; k < classes; k += blockDim.x)
            sum += exp(amdim_cls_clip(l[k]) - zmax);
        double lse = zmax + log(block_sum(sum, sh));
        xent = lse - amdim_cls_clip(l[y]);
        if (threadIdx.x == 0) { /* argmax, first maximum (as the CPU op) */
            int best = 0;
            for (int k = 1; k < classes; k++)
                best = l[k] > l[best] ? k : best;
            hit = best == y;
        }
        if (dl)
            for (int k = threadIdx.x; k < classes; k += blockDim.x)
                dl[k] += (float)(scale * amdim_cls_xent_grad(l[k], lse, k == y, inv_valid));
    }
    if (dl && dlogits_act) /* each thread converts the elements it wrote */
        for (int k = threadIdx.x; k < classes; k += blockDim.x)
            st<T>(dlogits_act, (size_t)i * classes + k, dl[k]);
    if (threadIdx.x == 0) {
        rows[3 * (size_t)i] = xent;
        rows[3 * (size_t)i + 1] = reg;
        rows[3 * (size_t)i + 2] = hit;
    }
}

extern "C" int amdim_classifier_loss_cuda(const amdim_cuda_ctx *c, const float *logits, int n, int n_all, int classes,
                                    const int32_t *labels, const double *inv_valid, float scale, float *dlogits,
                                    void *dlogits_act, double *rows)
{
    if (!c->bf16)
        dlogits_act = NULL; /* the float dlogits are the GEMMs' operand */
    LAUNCH_ACT(c, classifier_kernel, n, CLS_THREADS, logits, n_all, classes, labels, inv_valid, scale, dlogits,
               dlogits_act, rows);
    note(c, "classifier loss",
         (double)n * classes * (4.0 + (dlogits ? 4.0 : 0.0) + (dlogits_act ? act_es(c) : 0.0)) + 28.0 * n);
    return launch_check(c, "amdim_classifier_loss_cuda");
}
