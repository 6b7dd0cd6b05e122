/* The consumer side of the loader protocol: handshake, ring mapping and
 * batches in order, with liveness from the control pipe and the rings. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "amdim_loader.h"
#include "amdim_ring.h"
#include "loader_internal.h"

struct amdim_loader {
    int ctl_fd, sock;
    amdim_loader_info info;
    amdim_ring *rings;
    uint64_t epoch, index; /* next batch to deliver */
    int holding;
    int ended, pipe_closed;
    char ctl_buf[4096];
    size_t ctl_len;
    char last_error[1024];
    double wait_seconds;
    uint64_t *perm;
    uint64_t perm_epoch;
    /* the delivered batch's labels and record indices, copied out of the
     * ring and checked there: a worker can rewrite the ring at any time */
    int32_t *labels;
    uint64_t *records;
    double stall_seconds; /* no progress for this long while waiting: fail (0: never) */
    int failed;           /* amdim_loader_next reported a failure */
    char err[1024];
};


/* Reads what the pipe has (non-blocking) and handles complete lines. */
static void read_control(amdim_loader *l, int wait_ms)
{
    if (l->pipe_closed)
        return;
    struct pollfd p = {l->ctl_fd, POLLIN, 0};
    if (poll(&p, 1, wait_ms) <= 0)
        return;
    ssize_t r = read(l->ctl_fd, l->ctl_buf + l->ctl_len, sizeof l->ctl_buf - 1 - l->ctl_len);
    if (r <= 0) {
        if (r == 0 || (errno != EINTR && errno != EAGAIN))
            l->pipe_closed = 1;
        return;
    }
    l->ctl_len += (size_t)r;
    l->ctl_buf[l->ctl_len] = 0;
    char *line = l->ctl_buf, *nl;
    while ((nl = strchr(line, '\n'))) {
        *nl = 0;
        if (strncmp(line, "ERROR ", 6) == 0)
            snprintf(l->last_error, sizeof l->last_error, "%s", line + 6);
        else if (strncmp(line, "END", 3) == 0)
            l->ended = 1;
        line = nl + 1;
    }
    l->ctl_len = strlen(line);
    memmove(l->ctl_buf, line, l->ctl_len + 1);
    if (l->ctl_len == sizeof l->ctl_buf - 1) /* a line longer than the buffer: drop it */
        l->ctl_len = 0;
}

static int read_line(amdim_loader *l, int fd, char *buf, size_t n, double timeout, const char *what)
{
    size_t got = 0;
    double deadline = amdim_now() + timeout;
    while (got < n - 1) {
        struct pollfd p = {fd, POLLIN, 0};
        int pr = poll(&p, 1, 100);
        if (pr > 0) {
            ssize_t r = read(fd, buf + got, 1); /* byte by byte: nothing after the line is consumed */
            if (r <= 0)
                return AMDIM_FAIL_IN(l, AMDIM_E_PROTOCOL, "%s: the loader closed the connection%s", what,
                             got ? "" : " (is the input really amdim-load?)");
            if (buf[got] == '\n') {
                buf[got] = 0;
                return AMDIM_OK;
            }
            got++;
        }
        if (amdim_now() > deadline)
            return AMDIM_FAIL_IN(l, AMDIM_E_PROTOCOL, "%s: nothing within %.0f s", what, timeout);
    }
    return AMDIM_FAIL_IN(l, AMDIM_E_PROTOCOL, "%s: line too long", what);
}

/* A whole decimal number in [lo, hi] under `key=` of a control line. */
static int hello_num(const char *line, const char *key, unsigned long long lo, unsigned long long hi,
                     unsigned long long *out)
{
    char v[32], *e;
    *out = 0;
    if (!amdim_loader_kv(line, key, v, sizeof v) || v[0] < '0' || v[0] > '9')
        return 0;
    errno = 0;
    unsigned long long x = strtoull(v, &e, 10);
    if (*e || errno || x < lo || x > hi)
        return 0;
    *out = x;
    return 1;
}

int amdim_loader_parse_hello(const char *line, amdim_loader_info *in, char *sockname, size_t sn, char *err, size_t n)
{
    char v[128];
    memset(in, 0, sizeof *in);
    if (strncmp(line, "AMDIM-LOAD ", 11) != 0)
        return amdim_fail(err, n, AMDIM_E_PROTOCOL, "standard input is not amdim-load's control pipe (it starts with '%.20s')", line);
    if (!amdim_loader_kv(line, "v", v, sizeof v) || atoi(v) != AMDIM_LOAD_PROTOCOL_VERSION)
        return amdim_fail(err, n, AMDIM_E_VERSION, "amdim-load speaks protocol version %s, this consumer %d", v,
                          AMDIM_LOAD_PROTOCOL_VERSION);
    int ok = amdim_loader_kv(line, "socket", sockname, sn);
    ok &= amdim_loader_kv(line, "preset", in->preset, sizeof in->preset);
    ok &= amdim_loader_kv(line, "split", in->split, sizeof in->split);
    unsigned long long x;
#define NUM(key, field, lo, hi) (ok &= hello_num(line, key, lo, hi, &x), field = (__typeof__(field))x)
    NUM("pid", in->loader_pid, 1, INT32_MAX);
    NUM("size", in->size, 1, 1u << 16);
    NUM("batch", in->batch, 1, 1u << 20);
    NUM("workers", in->workers, 1, 253);
    NUM("records", in->records, 1, UINT64_MAX / 8);
    NUM("classes", in->classes, 0, INT32_MAX);
    NUM("batches", in->batches_per_epoch, 1, UINT64_MAX);
    NUM("drop_last", in->drop_last, 0, 1);
#undef NUM
    /* shard=R/N (absent: no sharding); a sharded loader always drops the last partial batch */
    in->shard_size = 1;
    if (amdim_loader_kv(line, "shard", v, sizeof v)) {
        unsigned r, z;
        char tail;
        if (sscanf(v, "%u/%u%c", &r, &z, &tail) != 2 || z < 1 || z > 65536 || r >= z || (z > 1 && !in->drop_last))
            ok = 0;
        else
            in->shard_rank = r, in->shard_size = z;
    }
    /* The numbers must agree with each other before anything is sized by them. */
    if (!ok || (uint64_t)in->batch * in->shard_size > (1u << 20) ||
        in->batches_per_epoch != loader_batches(in->records, in->batch * in->shard_size, !in->drop_last) ||
        !sockname[0])
        return amdim_fail(err, n, AMDIM_E_PROTOCOL, "incomplete or inconsistent handshake: %.200s", line);
    return AMDIM_OK;
}

/* Connects to the loader's abstract socket (named in the handshake). */
static int connect_loader(amdim_loader *l, const char *sockname)
{
    l->sock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    size_t sl = strlen(sockname);
    if (sl + 1 >= sizeof addr.sun_path)
        return AMDIM_FAIL_IN(l, AMDIM_E_PROTOCOL, "socket name too long");
    memcpy(addr.sun_path + 1, sockname, sl);
    if (l->sock < 0 ||
        connect(l->sock, (struct sockaddr *)&addr, (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + sl)) != 0)
        return AMDIM_FAIL_IN(l, AMDIM_E_PROTOCOL, "cannot connect to amdim-load (pid %d): %s", l->info.loader_pid,
                             strerror(errno));
    return AMDIM_OK;
}

/* START with what the consumer asks for (seed, where to begin, epochs). */
static int send_start(amdim_loader *l, const amdim_loader_request *req)
{
    char start[256];
    int n = snprintf(start, sizeof start, "START");
    if (req && req->has_seed)
        n += snprintf(start + n, sizeof start - (size_t)n, " seed=%llu", (unsigned long long)req->seed);
    if (req && req->start_epoch >= 0)
        n += snprintf(start + n, sizeof start - (size_t)n, " epoch=%lld", (long long)req->start_epoch);
    if (req && req->start_batch >= 0)
        n += snprintf(start + n, sizeof start - (size_t)n, " batch=%lld", (long long)req->start_batch);
    if (req && req->epochs > 0)
        n += snprintf(start + n, sizeof start - (size_t)n, " epochs=%lld", (long long)req->epochs);
    start[n++] = '\n';
    if (write(l->sock, start, (size_t)n) != n)
        return AMDIM_FAIL_IN(l, AMDIM_E_PROTOCOL, "cannot send START: %s", strerror(errno));
    return AMDIM_OK;
}

static void close_fds(const int *fds, int from, int to)
{
    for (int i = from; i < to; i++)
        close(fds[i]);
}

/* The answer to START (n bytes of reply) and the rings' file descriptors
 * that come with it: one per worker, else every received one is closed. */
static int receive_reply(amdim_loader *l, char *reply, size_t n, int *fds)
{
    union {
        char buf[CMSG_SPACE(sizeof(int) * 253)];
        struct cmsghdr align;
    } u;
    struct iovec iov = {reply, n - 1};
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.buf, .msg_controllen = sizeof u.buf};
    struct pollfd pp = {l->sock, POLLIN, 0};
    if (poll(&pp, 1, 30000) <= 0)
        return AMDIM_FAIL_IN(l, AMDIM_E_PROTOCOL, "amdim-load did not answer START");
    ssize_t r = recvmsg(l->sock, &msg, MSG_CMSG_CLOEXEC);
    if (r <= 0)
        return AMDIM_FAIL_IN(l, AMDIM_E_PROTOCOL, "amdim-load closed the connection after START");
    reply[r] = 0;
    int nfds = 0;
    for (struct cmsghdr *cm = CMSG_FIRSTHDR(&msg); cm; cm = CMSG_NXTHDR(&msg, cm))
        if (cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_RIGHTS) {
            nfds = (int)((cm->cmsg_len - CMSG_LEN(0)) / sizeof(int));
            memcpy(fds, CMSG_DATA(cm), (size_t)nfds * sizeof(int));
        }
    if (strncmp(reply, "OK ", 3) != 0) {
        close_fds(fds, 0, nfds);
        reply[strcspn(reply, "\n")] = 0;
        return AMDIM_FAIL_IN(l, AMDIM_E_PROTOCOL, "amdim-load refused the request: %s", reply);
    }
    if (nfds != (int)l->info.workers || (msg.msg_flags & MSG_CTRUNC)) {
        close_fds(fds, 0, nfds);
        return AMDIM_FAIL_IN(l, AMDIM_E_PROTOCOL, "expected %u ring descriptors, received %d", l->info.workers,
                             nfds);
    }
    return AMDIM_OK;
}

/* The OK line's seed, start and epochs into the info. */
static int parse_ok(amdim_loader *l, const char *reply)
{
    amdim_loader_info *in = &l->info;
    char v[128];
    int ok = 1;
    ok &= amdim_loader_kv(reply, "seed", v, sizeof v);
    in->seed = strtoull(v, NULL, 10);
    ok &= amdim_loader_kv(reply, "epoch", v, sizeof v);
    in->start_epoch = strtoull(v, NULL, 10);
    ok &= amdim_loader_kv(reply, "batch", v, sizeof v);
    in->start_batch = strtoull(v, NULL, 10);
    ok &= amdim_loader_kv(reply, "epochs", v, sizeof v);
    in->epochs = strtoull(v, NULL, 10);
    return ok ? AMDIM_OK : AMDIM_FAIL_IN(l, AMDIM_E_PROTOCOL, "bad OK line: %s", reply);
}

/* Maps ring w from fds[w] for every worker and checks it against the
 * handshake; the descriptors not yet taken are closed on failure. */
static int attach_rings(amdim_loader *l, const int *fds)
{
    const amdim_loader_info *in = &l->info;
    l->rings = calloc(in->workers, sizeof *l->rings);
    if (!l->rings) {
        close_fds(fds, 0, (int)in->workers);
        return AMDIM_FAIL_IN(l, AMDIM_E_NOMEM, "out of memory");
    }
    for (uint32_t w = 0; w < in->workers; w++)
        l->rings[w].fd = -1;
    for (uint32_t w = 0; w < in->workers; w++) {
        char why[512];
        int st = amdim_ring_attach(&l->rings[w], fds[w], why, sizeof why);
        if (st) {
            close_fds(fds, (int)w + 1, (int)in->workers);
            return AMDIM_FAIL_IN(l, st, "ring %u from amdim-load: %s", w, why);
        }
        const amdim_ring_layout *h = &l->rings[w].geom;
        if (h->batch != in->batch || h->height != in->size || h->width != in->size || h->channels != 3 ||
            h->ring_id != w || h->ring_count != in->workers) {
            close_fds(fds, (int)w + 1, (int)in->workers);
            return AMDIM_FAIL_IN(l, AMDIM_E_CORRUPT,
                                 "ring %u does not match the handshake (batch %u, %ux%u, id %u of %u)", w, h->batch,
                                 h->width, h->height, h->ring_id, h->ring_count);
        }
    }
    return AMDIM_OK;
}

/* The handshake, the request and its answer, the rings. */
static int attach_steps(amdim_loader *l, int fd, const amdim_loader_request *req)
{
    char line[1024], sockname[108] = "", reply[512];
    int fds[253];
    /* The loader may still be opening a large dataset: wait a while. */
    AMDIM_TRY(read_line(l, fd, line, sizeof line, 600, "reading the handshake"));
    AMDIM_TRY(amdim_loader_parse_hello(line, &l->info, sockname, sizeof sockname, l->err, sizeof l->err));
    AMDIM_TRY(connect_loader(l, sockname));
    AMDIM_TRY(send_start(l, req));
    AMDIM_TRY(receive_reply(l, reply, sizeof reply, fds));
    int st = parse_ok(l, reply);
    if (st) {
        close_fds(fds, 0, (int)l->info.workers);
        return st;
    }
    AMDIM_TRY(attach_rings(l, fds));
    const amdim_loader_info *in = &l->info;
    l->perm = malloc((in->records ? in->records : 1) * sizeof *l->perm);
    l->labels = malloc(in->batch * sizeof *l->labels);
    l->records = malloc(in->batch * sizeof *l->records);
    if (!l->perm || !l->labels || !l->records)
        return AMDIM_FAIL_IN(l, AMDIM_E_NOMEM, "out of memory");
    l->epoch = in->start_epoch;
    l->index = in->start_batch;
    return AMDIM_OK;
}

int amdim_loader_attach(amdim_loader **out, int fd, const amdim_loader_request *req, char *err, size_t errlen)
{
    *out = NULL;
    amdim_loader *l = calloc(1, sizeof *l);
    if (!l)
        return amdim_fail(err, errlen, AMDIM_E_NOMEM, "out of memory");
    l->ctl_fd = fd;
    l->sock = -1;
    l->stall_seconds = amdim_loader_stall_seconds("AMDIM_STALL_SECONDS");
    l->perm_epoch = UINT64_MAX;
    int st = attach_steps(l, fd, req);
    if (st) {
        snprintf(err, errlen, "%s", l->err);
        amdim_loader_close(l);
        return st;
    }
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    *out = l;
    return AMDIM_OK;
}

const amdim_loader_info *amdim_loader_get_info(const amdim_loader *l) { return &l->info; }

/* The worker owing the batch due has made no progress for `secs`. */
static int stalled(amdim_loader *l, uint32_t w, double secs)
{
    const amdim_ring_header *h = l->rings[w].hdr;
    int pid = atomic_load(&h->producer_pid);
    const char *state, *doing;
    amdim_loader_describe_worker(pid, atomic_load(&h->phase), &state, &doing);
    return AMDIM_FAIL_IN(l, AMDIM_E_WORKER,
                 "worker %u (pid %d) made no progress for %.0f s while epoch %llu batch %llu was due: it is %s, %s "
                 "(AMDIM_STALL_SECONDS=0 waits forever)",
                 w, pid, secs, (unsigned long long)l->epoch, (unsigned long long)l->index, state, doing);
}

static int loader_next(amdim_loader *l, amdim_batch *b);

/* Copies batch (l->epoch, l->index) out of slot s of ring w and checks
 * every field a worker wrote against what is due and the ring's private
 * geometry. */
static int take_slot(amdim_loader *l, uint32_t w, const amdim_slot *s, amdim_batch *b)
{
    const amdim_loader_info *in = &l->info;
    int pid = atomic_load(&l->rings[w].hdr->producer_pid);
    amdim_slot_header h;
    memcpy(&h, s->header, sizeof h); /* read once: what is checked is what is used */
    uint32_t want = loader_batch_count(in->records, in->batch, l->index);
    if (h.magic != AMDIM_SLOT_MAGIC || h.epoch != l->epoch || h.batch_index != l->index || h.count != want ||
        h.ring_id != w)
        return AMDIM_FAIL_IN(l, AMDIM_E_CORRUPT,
                     "ring %u (worker pid %d) holds epoch %llu batch %llu (%u samples) where epoch %llu batch %llu (%u) was due",
                     w, pid, (unsigned long long)h.epoch, (unsigned long long)h.batch_index, h.count,
                     (unsigned long long)l->epoch, (unsigned long long)l->index, want);
    AMDIM_ASSERT(want <= l->rings[w].geom.batch);
    memcpy(l->labels, s->labels, want * sizeof *l->labels);
    memcpy(l->records, s->indices, want * sizeof *l->records);
    for (uint32_t k = 0; k < want; k++) {
        if (l->labels[k] < -1 || (in->classes > 0 && l->labels[k] >= in->classes))
            return AMDIM_FAIL_IN(l, AMDIM_E_CORRUPT,
                         "ring %u (worker pid %d): epoch %llu batch %llu sample %u has label %d, outside -1..%d",
                         w, pid, (unsigned long long)l->epoch, (unsigned long long)l->index, k, l->labels[k],
                         in->classes - 1);
        if (l->records[k] >= in->records)
            return AMDIM_FAIL_IN(l, AMDIM_E_CORRUPT,
                         "ring %u (worker pid %d): epoch %llu batch %llu sample %u is record %llu of a split of %llu",
                         w, pid, (unsigned long long)l->epoch, (unsigned long long)l->index, k,
                         (unsigned long long)l->records[k], (unsigned long long)in->records);
    }
    b->epoch = l->epoch;
    b->index = l->index;
    b->count = want;
    b->last_in_epoch = l->index + 1 == in->batches_per_epoch;
    b->labels = l->labels;
    b->records = l->records;
    b->view1 = s->view1;
    b->view2 = s->view2;
    b->ring = w;
    return AMDIM_OK;
}

int amdim_loader_next(amdim_loader *l, amdim_batch *b)
{
    int st = loader_next(l, b);
    if (st < 0 && st != AMDIM_E_INVALID)
        l->failed = 1;
    return st;
}

static int loader_next(amdim_loader *l, amdim_batch *b)
{
    const amdim_loader_info *in = &l->info;
    if (l->holding)
        return AMDIM_FAIL_IN(l, AMDIM_E_INVALID, "release the previous batch first");
    if (l->epoch >= in->start_epoch + in->epochs)
        return 1;
    uint32_t w = (uint32_t)(l->index % in->workers);
    amdim_ring *ring = &l->rings[w];
    amdim_slot s;
    double t0 = amdim_now(), t_progress = t0;
    uint32_t progress = atomic_load_explicit(&ring->hdr->progress, memory_order_relaxed);
    int quiet_ticks = 0;
    for (;;) {
        int rc = amdim_ring_next(ring, &s, 100);
        if (rc == 0)
            break;
        if (rc < 0) {
            l->wait_seconds += amdim_now() - t0;
            return AMDIM_FAIL_IN(l, AMDIM_E_CORRUPT,
                         "ring %u (worker pid %d) claims %u batches ready after %u, more than its %u slots: the "
                         "ring was overwritten",
                         w, atomic_load(&ring->hdr->producer_pid), atomic_load(&ring->hdr->head) - ring->local,
                         ring->local, ring->geom.slot_count);
        }
        read_control(l, 0);
        uint32_t now_progress = atomic_load_explicit(&ring->hdr->progress, memory_order_relaxed);
        double now = amdim_now();
        if (now_progress != progress) {
            progress = now_progress;
            t_progress = now;
        } else if (l->stall_seconds > 0 && now - t_progress > l->stall_seconds && rc == 1) {
            l->wait_seconds += now - t0;
            return stalled(l, w, now - t_progress);
        }
        if (rc == 2) {
            l->wait_seconds += amdim_now() - t0;
            char ring_why[AMDIM_RING_ERROR_MAX];
            amdim_ring_get_error(ring, ring_why, sizeof ring_why);
            const char *why = ring_why[0] ? ring_why : l->last_error;
            return AMDIM_FAIL_IN(l, AMDIM_E_WORKER, "epoch %llu batch %llu never arrived: %s", (unsigned long long)l->epoch,
                         (unsigned long long)l->index, why[0] ? why : "its worker stopped");
        }
        /* Loader gone without a word (SIGKILL): its workers die with it. */
        if (l->pipe_closed && !l->ended && ++quiet_ticks >= 5) {
            l->wait_seconds += amdim_now() - t0;
            return AMDIM_FAIL_IN(l, AMDIM_E_PROTOCOL, "amdim-load (pid %d) exited before epoch %llu batch %llu was made%s%s",
                         in->loader_pid, (unsigned long long)l->epoch, (unsigned long long)l->index,
                         l->last_error[0] ? ": " : "", l->last_error);
        }
    }
    l->wait_seconds += amdim_now() - t0;
    int st = take_slot(l, w, &s, b);
    if (st)
        return st;
    l->holding = 1;
    return 0;
}

void amdim_loader_release(amdim_loader *l, amdim_batch *b)
{
    if (!l->holding)
        return;
    amdim_ring_release(&l->rings[b->ring]);
    l->holding = 0;
    if (++l->index == l->info.batches_per_epoch) {
        l->index = 0;
        l->epoch++;
    }
}

double amdim_loader_wait_seconds(const amdim_loader *l) { return l->wait_seconds; }

void amdim_loader_ring_memory(const amdim_loader *l, uint32_t i, void **base, size_t *bytes)
{
    *base = l->rings[i].base;
    *bytes = l->rings[i].bytes;
}

uint32_t amdim_loader_expected_records(amdim_loader *l, uint64_t epoch, uint64_t index, uint64_t *out)
{
    const amdim_loader_info *in = &l->info;
    if (l->perm_epoch != epoch) {
        amdim_loader_epoch_order(in->seed, epoch, in->records, l->perm);
        l->perm_epoch = epoch;
    }
    uint32_t n = in->shard_size > 1 ? in->batch : loader_batch_count(in->records, in->batch, index);
    memcpy(out, l->perm + loader_shard_first(index, in->batch, in->shard_size, in->shard_rank), n * sizeof *out);
    return n;
}

const char *amdim_loader_error(const amdim_loader *l) { return l ? l->err : "no loader"; }

void amdim_loader_close(amdim_loader *l)
{
    if (!l)
        return;
    if (l->rings)
        for (uint32_t w = 0; w < l->info.workers; w++)
            if (l->rings[w].base)
                amdim_ring_close(&l->rings[w]);
    /* Tell the loader this is a deliberate stop (STOP), or that the consumer
     * gave up on an error it reported (ABORT), not a crash: a consumer that
     * vanishes without either makes amdim-load exit non-zero too. */
    const char *bye = l->failed ? "ABORT\n" : "STOP\n";
    if (l->sock >= 0 && send(l->sock, bye, strlen(bye), MSG_NOSIGNAL | MSG_DONTWAIT) != (ssize_t)strlen(bye)) {
        /* the loader is gone already: nothing to tell */
    }
    if (l->sock >= 0)
        close(l->sock);
    free(l->rings);
    free(l->perm);
    free(l->labels);
    free(l->records);
    free(l);
}
