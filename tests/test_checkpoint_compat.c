/* Checkpoints written before the heads' hidden BatchNorm took the authors'
 * name (rkhs_block_N.bn1 instead of bn_hid) still load, weights and Adam
 * moments alike, under the new names. The old files are made from a new
 * checkpoint by renaming the keys in its safetensors header (the header
 * keeps its length: spaces pad it, as the format allows). */
#include <stdlib.h>
#include <string.h>

#include "amdim_checkpoint.h"
#include "amdim_trainer.h"
#include "testutil.h"

/* Renames every ".bn_hid." key in the header to ".bn1." in place. */
static int rename_to_legacy(const char *path)
{
    size_t len;
    char *f = test_read_file(path, &len);
    uint64_t hl = 0;
    for (int i = 7; i >= 0; i--)
        hl = hl << 8 | (uint8_t)f[i];
    char *h = f + 8, *end = h + hl, *p;
    int renamed = 0;
    while ((p = memmem(h, (size_t)(end - h), ".bn_hid.", 8))) {
        memmove(p + 5, p + 8, (size_t)(end - (p + 8)));
        memcpy(p, ".bn1.", 5);
        memset(end - 3, ' ', 3);
        renamed++;
    }
    test_write_file(path, f, len);
    free(f);
    return renamed;
}

int main(void)
{
    amdim_model *a = test_tiny_model(1, 5);
    /* distinct values everywhere, the moments included */
    for (int i = 0; i < amdim_model_param_count(a); i++) {
        amdim_param p;
        amdim_model_param(a, i, &p);
        for (size_t k = 0; k < p.size; k++) {
            p.data[k] = p.role == AMDIM_ROLE_BN_COUNT ? 7.0f : (float)(i * 1000 + k) * 1e-3f;
            if (p.adam_m) {
                p.adam_m[k] = (float)k * 1e-4f;
                p.adam_v[k] = (float)(i + k) * 1e-5f;
            }
        }
    }
    REQUIRE(amdim_model_push(a) == 0, "push");
    amdim_checkpoint_info info = {.step = 12, .seed = 5, .epochs = 3, .max_steps = -1, .batch = 8};
    snprintf(info.preset, sizeof info.preset, "cifar");
    char err[1024];
    const char *dir = test_tmpdir();
    REQUIRE(amdim_checkpoint_save(a, dir, &info, err, sizeof err) == 0, "save: %s", err);
    char w[4200], o[4200];
    snprintf(w, sizeof w, "%s/ckpt-00000012.safetensors", dir);
    snprintf(o, sizeof o, "%s/ckpt-00000012.optim.safetensors", dir);
    CHECK(rename_to_legacy(w) == 10, "expected 10 bn_hid tensors in the weights file");
    CHECK(rename_to_legacy(o) == 8, "expected 8 bn_hid moments in the optimiser file");

    amdim_model *b = test_tiny_model(1, 5);
    REQUIRE(amdim_checkpoint_load(b, w, AMDIM_CKPT_OPTIMIZER, err, sizeof err) == 0, "legacy load: %s", err);
    REQUIRE(amdim_model_pull(b) == 0, "pull");
    int same = 1;
    for (int i = 0; i < amdim_model_param_count(a); i++) {
        amdim_param p, q;
        amdim_model_param(a, i, &p);
        amdim_model_param(b, i, &q);
        same &= memcmp(p.data, q.data, p.size * sizeof(float)) == 0;
        if (p.adam_m)
            same &= memcmp(p.adam_m, q.adam_m, p.size * 4) == 0 && memcmp(p.adam_v, q.adam_v, p.size * 4) == 0;
        CHECK(same, "tensor %s differs after the legacy load", p.name);
        if (!same)
            break;
    }
    CHECK(amdim_model_updates(b) == 12, "update count not restored");
    /* the next checkpoint uses the new names */
    info.step = 13;
    REQUIRE(amdim_checkpoint_save(b, dir, &info, err, sizeof err) == 0, "save: %s", err);
    snprintf(w, sizeof w, "%s/ckpt-00000013.safetensors", dir);
    size_t len;
    char *f = test_read_file(w, &len);
    CHECK(memmem(f, len, "rkhs_block_5.bn_hid.bn.weight", 29) && !memmem(f, len, "rkhs_block_5.bn1.", 17),
          "the re-saved checkpoint does not use bn_hid");
    free(f);
    amdim_model_destroy(a);
    amdim_model_destroy(b);
    test_cleanup();
    return test_finish("test_checkpoint_compat");
}
