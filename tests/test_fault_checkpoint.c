/* A checkpoint cut short (a copy interrupted, a disk filled by something
 * else) is called a truncated file, naming it, whether the cut falls in
 * the tensor data or in the header; a damaged header stays "malformed". */
#include <stdlib.h>
#include <string.h>

#include "amdim_checkpoint.h"
#include "amdim_trainer.h"
#include "testutil.h"

int main(void)
{
    amdim_model *m = test_tiny_model(0, 0);
    amdim_checkpoint_info info = {.step = 3, .seed = 5, .epochs = 1, .max_steps = -1, .batch = 8};
    snprintf(info.preset, sizeof info.preset, "cifar");
    char err[1024], w[4200];
    const char *dir = test_tmpdir();
    REQUIRE(amdim_checkpoint_save(m, dir, &info, err, sizeof err) == 0, "save: %s", err);
    snprintf(w, sizeof w, "%s/ckpt-00000003.safetensors", dir);
    size_t len;
    char *f = test_read_file(w, &len);
    REQUIRE(f && len > 4096, "checkpoint of %zu bytes", len);
    uint64_t hl = 0;
    for (int i = 7; i >= 0; i--)
        hl = hl << 8 | (uint8_t)f[i];
    const struct {
        const char *name;
        size_t len;
    } cuts[] = {{"minus-1", len - 1}, {"half", len / 2}, {"header-only", 8 + hl}, {"in-header", 8 + hl / 2}};
    for (size_t c = 0; c < sizeof cuts / sizeof *cuts; c++) {
        char path[4200];
        snprintf(path, sizeof path, "%s/cut-%s.safetensors", dir, cuts[c].name);
        test_write_file(path, f, cuts[c].len);
        amdim_model_config cfg;
        amdim_checkpoint_info in;
        int st = amdim_checkpoint_read_meta(path, &cfg, &in, err, sizeof err);
        CHECK(st == AMDIM_E_TRUNCATED && strstr(err, "truncated file") && strstr(err, cuts[c].name),
              "read_meta %s: status %d: %s", cuts[c].name, st, err);
        st = amdim_checkpoint_load(m, path, 0, err, sizeof err);
        CHECK(st == AMDIM_E_TRUNCATED && strstr(err, "truncated file"), "load %s: status %d: %s", cuts[c].name, st, err);
    }
    /* A damaged header (not a cut) is still called malformed. */
    char *g = malloc(len);
    memcpy(g, f, len);
    memcpy(g + 8, "[", 1);
    test_write_file(test_path("bad.safetensors"), g, len);
    amdim_model_config cfg;
    amdim_checkpoint_info in;
    int st = amdim_checkpoint_read_meta(test_path("bad.safetensors"), &cfg, &in, err, sizeof err);
    CHECK(st == AMDIM_E_CORRUPT && strstr(err, "malformed"), "damaged header: %d %s", st, err);
    free(g);
    free(f);
    amdim_model_destroy(m);
    return test_finish("test_fault_checkpoint");
}
