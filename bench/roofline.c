/* A training step's roofline (roofline.h). */
#include "roofline.h"

#include <string.h>

const roofline_card roofline_cards[2] = {{"H100 SXM", 989.4, 3.35}, {"H200", 989.4, 4.8}};

const roofline_efficiency roofline_default_efficiency = {0.70, 0.55, 0.45, 0.90, 0.65, 1.5};

void roofline_add(void *arg, const char *op, int launches, double bytes, double flops)
{
    roofline *r = arg;
    int i = 0;
    while (i < r->n && strcmp(r->ops[i].op, op) != 0)
        i++;
    if (i == r->n) {
        if (r->n == ROOFLINE_MAX_OPS)
            i = r->n - 1; /* the last row takes whatever does not fit */
        else {
            r->n++;
            memset(&r->ops[i], 0, sizeof r->ops[i]);
            snprintf(r->ops[i].op, sizeof r->ops[i].op, "%s", op);
        }
    }
    r->ops[i].launches += launches;
    r->ops[i].bytes += bytes;
    r->ops[i].flops += flops;
    r->launches += launches;
    r->bytes += bytes;
    r->flops += flops;
}

int roofline_is_library(const char *op) { return strncmp(op, "GEMM", 4) == 0 || strncmp(op, "convolution", 11) == 0; }

static double op_seconds(const roofline_op *o, const roofline_card *c, const roofline_efficiency *e)
{
    double bw = c->tbytes_s * 1e12, peak = c->tflops * 1e12, t;
    if (roofline_is_library(o->op)) {
        double eff = strncmp(o->op, "GEMM", 4) == 0         ? e->gemm
                     : strstr(o->op, "filter gradient") != NULL ? e->wgrad
                                                                : e->conv;
        double tc = o->flops / (peak * eff), tm = o->bytes / (bw * e->memory);
        t = tc > tm ? tc : tm;
    } else {
        t = o->bytes / (bw * e->kernel);
    }
    return t + o->launches * e->launch_us * 1e-6;
}

double roofline_seconds(const roofline *r, const roofline_card *card, const roofline_efficiency *e)
{
    double t = 0;
    for (int i = 0; i < r->n; i++)
        t += op_seconds(&r->ops[i], card, e);
    return t;
}

void roofline_print(FILE *f, const roofline *r, const roofline_efficiency *e, double step_flops, double measured_s,
                    const char *measured_on, double measured_peak)
{
    fprintf(f, "# roofline: library time max(FLOPs / (peak x eff), bytes / (bandwidth x %.2f)) with eff GEMM %.2f, "
               "convolution %.2f, filter gradient %.2f; our kernels bytes / (bandwidth x %.2f); %.1f us per launch\n",
            e->memory, e->gemm, e->conv, e->wgrad, e->kernel, e->launch_us);
    fprintf(f, "%-34s %9s %10s %10s", "operation", "launches", "GB", "TFLOP");
    for (size_t c = 0; c < sizeof roofline_cards / sizeof *roofline_cards; c++)
        fprintf(f, " %12s", roofline_cards[c].name);
    fprintf(f, "\n");
    double ew_bytes = 0;
    long ew_launches = 0;
    for (int i = 0; i < r->n; i++) {
        const roofline_op *o = &r->ops[i];
        fprintf(f, "%-34s %9ld %10.3f %10.3f", o->op, o->launches, o->bytes / 1e9, o->flops / 1e12);
        for (size_t c = 0; c < sizeof roofline_cards / sizeof *roofline_cards; c++)
            fprintf(f, " %9.2f ms", 1e3 * op_seconds(o, &roofline_cards[c], e));
        fprintf(f, "\n");
        if (!roofline_is_library(o->op))
            ew_bytes += o->bytes, ew_launches += o->launches;
    }
    fprintf(f, "%-34s %9ld %10.3f %10.3f", "total", r->launches, r->bytes / 1e9, r->flops / 1e12);
    double t[sizeof roofline_cards / sizeof *roofline_cards];
    for (size_t c = 0; c < sizeof roofline_cards / sizeof *roofline_cards; c++) {
        t[c] = roofline_seconds(r, &roofline_cards[c], e);
        fprintf(f, " %9.2f ms", 1e3 * t[c]);
    }
    fprintf(f, "\n# element-wise (our kernels): %.2f GB per step in %ld launches; libraries %.2f GB; %ld launches in "
               "all\n",
            ew_bytes / 1e9, ew_launches, (r->bytes - ew_bytes) / 1e9, r->launches);
    for (size_t c = 0; c < sizeof roofline_cards / sizeof *roofline_cards; c++)
        fprintf(f, "# projected on %s: %.1f ms per step, MFU %.1f %% of %.1f TFLOP/s (%.2f TFLOP per step)\n",
                roofline_cards[c].name, 1e3 * t[c], 100 * step_flops / t[c] / (roofline_cards[c].tflops * 1e12),
                roofline_cards[c].tflops, step_flops / 1e12);
    if (measured_s > 0 && measured_peak > 0)
        fprintf(f, "# measured on %s: %.1f ms per step, MFU %.1f %% of its %.1f TFLOP/s\n",
                measured_on ? measured_on : "this GPU", 1e3 * measured_s,
                100 * step_flops / measured_s / (measured_peak * 1e12), measured_peak);
    else if (measured_s > 0)
        fprintf(f, "# measured on %s: %.1f ms per step (its bf16 peak is not in the table)\n",
                measured_on ? measured_on : "this GPU", 1e3 * measured_s);
}
