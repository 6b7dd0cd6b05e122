/* Per-stage timing of training steps (amdim_trainer.h: amdim_model_profile):
 * the backends report each stage's time through amdim_model_prof_add. */
#include <stdlib.h>
#include <string.h>

#include "backend_internal.h"

void amdim_model_profile(amdim_model *m, int on)
{
    if (on && !m->prof_f) {
        int n = amdim_arch_stage_count(&m->arch);
        m->prof_f = calloc((size_t)n, sizeof(double));
        m->prof_b = calloc((size_t)n, sizeof(double));
        m->prof_ff = calloc((size_t)n, sizeof(double));
        m->prof_fb = calloc((size_t)n, sizeof(double));
        m->prof_name = calloc((size_t)n, sizeof *m->prof_name);
        if (!m->prof_f || !m->prof_b || !m->prof_ff || !m->prof_fb || !m->prof_name) {
            free(m->prof_f), free(m->prof_b), free(m->prof_ff), free(m->prof_fb), free(m->prof_name);
            m->prof_f = m->prof_b = m->prof_ff = m->prof_fb = NULL;
            m->prof_name = NULL;
            m->profile = 0;
            return;
        }
        for (int s = 0; s < n; s++)
            amdim_arch_stage_name(&m->arch, s, m->prof_name[s], sizeof m->prof_name[s]);
    }
    m->profile = on && m->prof_f;
}

void amdim_model_prof_add(amdim_model *m, int stage, int backward, double seconds, int B)
{
    if (!m->profile)
        return;
    double f, b;
    amdim_arch_stage_flops(&m->arch, stage, B, &f, &b);
    if (stage < m->arch.nlayers + 2) { /* a layer or head: one call per view, the step's FLOPs over both */
        f /= 2;
        b /= 2;
    }
    if (backward) {
        m->prof_b[stage] += seconds;
        m->prof_fb[stage] += b;
    } else {
        m->prof_f[stage] += seconds;
        m->prof_ff[stage] += f;
    }
}

int amdim_model_profile_count(const amdim_model *m) { return m->prof_f ? amdim_arch_stage_count(&m->arch) : 0; }

void amdim_model_profile_get(const amdim_model *m, int i, const char **name, double *f, double *b, double *ff,
                             double *fb)
{
    *name = m->prof_name[i];
    *f = m->prof_f[i];
    *b = m->prof_b[i];
    *ff = m->prof_ff[i];
    *fb = m->prof_fb[i];
}
