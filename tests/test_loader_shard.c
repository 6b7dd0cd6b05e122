/* Data-parallel sharding (amdim-load --shard R/N): for N = 1, 2 and 3 ranks
 * and a global batch of 12, the ranks' shares of global batch b, in rank
 * order, hold exactly the records of the unsharded batch b, with the same
 * view bytes, over two epochs; bad shards are refused. Each rank's loader
 * runs as a child process and is consumed here through the consumer API.
 * Arguments: the amdim-load binary. */
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "amdim_loader.h"
#include "loader_fixtures.h"

#define GLOBAL 12
#define EPOCHS 2
#define MAXB 32 /* batches per epoch at most */

typedef struct {
    uint64_t records[EPOCHS][MAXB][GLOBAL];
    uint64_t views[EPOCHS][MAXB][GLOBAL]; /* FNV-1a of both views of each sample */
    uint64_t batches;
} capture;

static uint64_t fnv(const uint8_t *p, size_t n, uint64_t h)
{
    for (size_t i = 0; i < n; i++)
        h = (h ^ p[i]) * 1099511628211ull;
    return h;
}

/* Runs amdim-load --shard r/n and stores its batches at their global place. */
static void run_rank(const char *load_bin, const char *data, int r, int n, capture *c)
{
    int fds[2];
    REQUIRE(pipe(fds) == 0, "pipe");
    char shard[32], batch[16];
    snprintf(shard, sizeof shard, "%d/%d", r, n);
    snprintf(batch, sizeof batch, "%d", GLOBAL);
    pid_t pid = fork();
    REQUIRE(pid >= 0, "fork");
    if (pid == 0) {
        dup2(fds[1], 1);
        close(fds[0]);
        close(fds[1]);
        execl(load_bin, load_bin, "--workers", "2", "--batch", batch, "--epochs", "2", "--seed", "5", "--shard", shard,
              data, (char *)NULL);
        _exit(127);
    }
    close(fds[1]);
    amdim_loader *l;
    char err[2048];
    amdim_loader_request req = {.start_epoch = -1, .start_batch = -1, .epochs = -1};
    REQUIRE(amdim_loader_attach(&l, fds[0], &req, err, sizeof err) == 0, "attach %s: %s", shard, err);
    const amdim_loader_info *in = amdim_loader_get_info(l);
    CHECK(in->batch == (uint32_t)(GLOBAL / n) && in->shard_rank == (uint32_t)r && in->shard_size == (uint32_t)n,
          "%s: handshake batch %u shard %u/%u", shard, in->batch, in->shard_rank, in->shard_size);
    c->batches = in->batches_per_epoch;
    REQUIRE(c->batches <= MAXB, "too many batches");
    size_t view = (size_t)in->size * in->size * 3;
    amdim_batch b;
    int rc, got = 0;
    while ((rc = amdim_loader_next(l, &b)) == 0) {
        REQUIRE(b.epoch < EPOCHS && b.index < c->batches && b.count == in->batch, "%s: batch %llu/%llu of %u", shard,
                (unsigned long long)b.epoch, (unsigned long long)b.index, b.count);
        for (uint32_t k = 0; k < b.count; k++) {
            uint32_t pos = (uint32_t)r * in->batch + k;
            c->records[b.epoch][b.index][pos] = b.records[k];
            c->views[b.epoch][b.index][pos] =
                fnv(b.view2 + k * view, view, fnv(b.view1 + k * view, view, 1469598103934665603ull));
        }
        amdim_loader_release(l, &b);
        got++;
    }
    CHECK(rc == 1, "%s: %s", shard, amdim_loader_error(l));
    CHECK((uint64_t)got == EPOCHS * c->batches, "%s: %d batches, want %llu", shard, got,
          (unsigned long long)(EPOCHS * c->batches));
    amdim_loader_close(l);
    close(fds[0]);
    int ws;
    waitpid(pid, &ws, 0);
    CHECK(WIFEXITED(ws) && WEXITSTATUS(ws) == 0, "%s: amdim-load exit status %d", shard, ws);
}

int main(int argc, char **argv)
{
    REQUIRE(argc == 2, "usage: test_loader_shard AMDIM-LOAD");
    signal(SIGPIPE, SIG_IGN);
    const char *data = test_path("raw.lmdb");
    fixture_raw(data, 77); /* 6 global batches of 12 per epoch, 5 records dropped */
    static capture one, many;
    run_rank(argv[1], data, 0, 1, &one);
    CHECK(one.batches == 6, "%llu batches per epoch", (unsigned long long)one.batches);
    for (int n = 2; n <= 3; n++) {
        memset(&many, 0, sizeof many);
        for (int r = 0; r < n; r++)
            run_rank(argv[1], data, r, n, &many);
        CHECK(many.batches == one.batches, "%d ranks: %llu batches", n, (unsigned long long)many.batches);
        CHECK(memcmp(one.records, many.records, sizeof one.records) == 0, "%d ranks: other records than 1 rank", n);
        CHECK(memcmp(one.views, many.views, sizeof one.views) == 0, "%d ranks: other view bytes than 1 rank", n);
        printf("%d ranks: the same %llu records and view bytes as 1 rank\n", n,
               (unsigned long long)(EPOCHS * one.batches * GLOBAL));
    }
    /* refused: batch not divisible, rank out of range, --keep-last */
    const char *bad[][8] = {{"--batch", "10", "--shard", "1/3", NULL},
                            {"--batch", "12", "--shard", "3/3", NULL},
                            {"--batch", "12", "--shard", "0/2", "--keep-last", NULL}};
    for (int i = 0; i < 3; i++) {
        char *av[12] = {argv[1]};
        int k = 1;
        for (int j = 0; bad[i][j]; j++)
            av[k++] = (char *)bad[i][j];
        av[k++] = (char *)data;
        av[k] = NULL;
        char *o, *e;
        int ws = test_run(av, &o, &e);
        CHECK(WIFEXITED(ws) && WEXITSTATUS(ws) != 0 && e && strstr(e, "shard"), "bad shard %d accepted: %s", i,
              e ? e : "");
        free(o);
        free(e);
    }
    test_cleanup();
    return test_finish("test_loader_shard");
}
