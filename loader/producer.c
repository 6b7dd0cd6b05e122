/* amdim-load's processes: the supervisor (handshake, worker lifecycle,
 * liveness of both sides, progress) and the workers (io_uring reads,
 * decode + two views, ring publication). */
#include <errno.h>
#include <fcntl.h>
#include <liburing.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "amdim_dataset.h"
#include "amdim_loader.h"
#include "amdim_ring.h"
#include "loader_internal.h"

/* Per-worker counters in anonymous shared memory (inherited by fork). */
typedef struct {
    _Atomic uint64_t pairs, io_wait_ns, slot_wait_ns;
    uint8_t pad[64 - 24];
} worker_stats;

typedef struct {
    const amdim_loader_serve_options *opt;
    amdim_dataset *ds;
    uint64_t *offsets;
    uint32_t *lengths;
    uint64_t records;
    int data_fd;
    amdim_augment_config aug;
    amdim_split_info info;
    uint64_t max_pixels; /* the packer's --max-pixels for this split; 0: default */
    uint32_t W, B;    /* B: this rank's share of a global batch of B x N */
    uint32_t R, N;    /* shard rank and size (0, 1 without sharding) */
    uint64_t nb;
    int use_uring;
    /* agreed with the consumer */
    uint64_t seed, e0, b0, epochs;
    amdim_ring *rings;
    worker_stats *stats;
    pid_t *pids;
    int *pidfds, *state, *respawns; /* state: 0 running, 1 finished, 2 failed */
    int listen_fd, conn_fd;
    pid_t parent;
    uint64_t oom_kills0; /* /proc/vmstat oom_kill when the workers started */
    uint64_t intruders, intruders_unshown; /* connections that were not the consumer */
    double intruders_t;                    /* when the last summary of them was printed */
    char sockname[64];
    char *err;
    size_t errlen;
} loader;


static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* Writes a whole control line; -1 if the pipe is gone. */
static int ctl_write(int fd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int ctl_write(int fd, const char *fmt, ...)
{
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof line - 1, fmt, ap);
    va_end(ap);
    if (n < 0)
        return -1;
    if (n > (int)sizeof line - 2)
        n = (int)sizeof line - 2;
    line[n++] = '\n';
    for (int off = 0; off < n;) {
        ssize_t w = write(fd, line + off, (size_t)(n - off));
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        off += (int)w;
    }
    return 0;
}

/* ---- worker ------------------------------------------------------------- */

typedef struct {
    uint8_t *data;
    size_t cap;
} read_buf;

static void worker_fail(amdim_ring *ring, const char *fmt, ...) __attribute__((format(printf, 2, 3), noreturn));
static void worker_fail(amdim_ring *ring, const char *fmt, ...)
{
    char msg[AMDIM_RING_ERROR_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    amdim_ring_set_state(ring, AMDIM_PRODUCER_FAILED, msg);
    _exit(3);
}

/* Decodes one record and writes its two views into position k of the slot. */
static void make_sample(loader *L, amdim_augmenter *aug, amdim_ring *ring, amdim_slot *slot, uint32_t k,
                        uint64_t rec_index, const uint8_t *bytes, size_t len, uint64_t epoch, uint64_t batch)
{
    amdim_record rec;
    char why[256];
    atomic_store_explicit(&ring->hdr->phase, AMDIM_PHASE_DECODE, memory_order_relaxed);
    atomic_fetch_add_explicit(&ring->hdr->progress, 1, memory_order_relaxed);
    int st = amdim_record_decode(bytes, len, &rec, why, sizeof why);
    if (st)
        worker_fail(ring, "%s: split %s record %llu (epoch %llu batch %llu): %s", L->opt->path, L->info.name,
                    (unsigned long long)rec_index, (unsigned long long)epoch, (unsigned long long)batch, why);
    if (L->info.classes > 0 && rec.label >= L->info.classes)
        worker_fail(ring, "%s: split %s record %llu (epoch %llu batch %llu): label %d is not below the split's %d classes",
                    L->opt->path, L->info.name, (unsigned long long)rec_index, (unsigned long long)epoch,
                    (unsigned long long)batch, rec.label, L->info.classes);
    size_t view = (size_t)L->aug.size * L->aug.size * 3;
    st = amdim_augment_pair(aug, &rec, L->seed, epoch, rec_index, slot->view1 + k * view, slot->view2 + k * view, NULL);
    if (st)
        worker_fail(ring, "%s: split %s record %llu (epoch %llu batch %llu): %s", L->opt->path, L->info.name,
                    (unsigned long long)rec_index, (unsigned long long)epoch, (unsigned long long)batch,
                    amdim_augment_error(aug));
    slot->labels[k] = rec.label;
    slot->indices[k] = rec_index;
}

static void grow(read_buf *b, size_t len, amdim_ring *ring)
{
    if (len <= b->cap)
        return;
    free(b->data);
    b->data = malloc(len);
    b->cap = len;
    if (!b->data)
        worker_fail(ring, "out of memory for a %zu-byte record", len);
}

static void fill_batch(loader *L, uint32_t w, amdim_augmenter *aug, struct io_uring *uring, read_buf *bufs,
                       const uint64_t *perm, amdim_slot *slot, uint64_t e, uint64_t b, uint32_t count)
{
    amdim_ring *ring = &L->rings[w];
    worker_stats *ws = &L->stats[w];
    const uint64_t *recs = perm + loader_shard_first(b, L->B, L->N, L->R);
    if (!uring) {
        for (uint32_t k = 0; k < count; k++) {
            uint64_t r = recs[k];
            grow(&bufs[0], L->lengths[r], ring);
            atomic_store_explicit(&ring->hdr->phase, AMDIM_PHASE_READ, memory_order_relaxed);
            uint64_t t0 = now_ns();
            size_t got = 0;
            while (got < L->lengths[r]) {
                ssize_t n = pread(L->data_fd, bufs[0].data + got, L->lengths[r] - got, (off_t)(L->offsets[r] + got));
                if (n < 0 && errno == EINTR)
                    continue;
                if (n <= 0)
                    worker_fail(ring, "%s: reading split %s record %llu failed: %s", L->opt->path, L->info.name,
                                (unsigned long long)r, n < 0 ? strerror(errno) : "file is shorter than its index");
                got += (size_t)n;
            }
            atomic_fetch_add_explicit(&ws->io_wait_ns, now_ns() - t0, memory_order_relaxed);
            make_sample(L, aug, ring, slot, k, r, bufs[0].data, got, e, b);
        }
        return;
    }
    int qd = L->opt->queue_depth;
    int free_list[256], nfree = 0;
    for (int j = qd - 1; j >= 0; j--)
        free_list[nfree++] = j;
    uint32_t next = 0, done = 0;
    int inflight = 0;
    while (done < count) {
        while (inflight < qd && next < count) {
            int j = free_list[--nfree];
            uint64_t r = recs[next];
            grow(&bufs[j], L->lengths[r], ring);
            struct io_uring_sqe *sqe = io_uring_get_sqe(uring);
            io_uring_prep_read(sqe, L->data_fd, bufs[j].data, L->lengths[r], L->offsets[r]);
            io_uring_sqe_set_data64(sqe, (uint64_t)next << 16 | (uint64_t)j);
            next++;
            inflight++;
        }
        uint64_t t0 = now_ns();
        atomic_store_explicit(&ring->hdr->phase, AMDIM_PHASE_READ, memory_order_relaxed);
        int rc = io_uring_submit_and_wait(uring, 1);
        atomic_fetch_add_explicit(&ws->io_wait_ns, now_ns() - t0, memory_order_relaxed);
        if (rc < 0 && rc != -EINTR)
            worker_fail(ring, "io_uring_submit_and_wait(): %s", strerror(-rc));
        struct io_uring_cqe *cqe;
        while (io_uring_peek_cqe(uring, &cqe) == 0) {
            uint64_t ud = io_uring_cqe_get_data64(cqe);
            int res = cqe->res;
            io_uring_cqe_seen(uring, cqe);
            uint32_t k = (uint32_t)(ud >> 16);
            int j = (int)(ud & 0xffff);
            uint64_t r = recs[k];
            if (res < 0 || (uint32_t)res != L->lengths[r])
                worker_fail(ring, "%s: reading split %s record %llu failed: %s", L->opt->path, L->info.name,
                            (unsigned long long)r, res < 0 ? strerror(-res) : "short read (file truncated?)");
            make_sample(L, aug, ring, slot, k, r, bufs[j].data, (size_t)res, e, b);
            free_list[nfree++] = j;
            inflight--;
            done++;
        }
    }
}

static void __attribute__((noreturn)) worker_main(loader *L, uint32_t w)
{
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != L->parent)
        _exit(1);
    signal(SIGINT, SIG_DFL);
    signal(SIGTERM, SIG_DFL);
    signal(SIGPIPE, SIG_DFL);
    /* Workers never speak on the control pipe or the socket. */
    int devnull = open("/dev/null", O_WRONLY);
    if (devnull >= 0) {
        dup2(devnull, L->opt->out_fd);
        close(devnull);
    }
    if (L->listen_fd >= 0)
        close(L->listen_fd);
    if (L->conn_fd >= 0)
        close(L->conn_fd);
    amdim_ring *ring = &L->rings[w];
    ring->local = atomic_load(&ring->hdr->head);
    atomic_store(&ring->hdr->producer_pid, (int32_t)getpid());
    amdim_augmenter *aug;
    if (amdim_augment_create(&aug, &L->aug))
        worker_fail(ring, "cannot create the augmenter");
    amdim_decode_options dec = {.region = L->opt->decode != AMDIM_LOAD_DECODE_FULL,
                                .scales = L->opt->decode == AMDIM_LOAD_DECODE_SCALED ? AMDIM_DECODE_SCALES_DEFAULT : 0};
    amdim_augment_set_decode(aug, &dec);
    amdim_augment_set_max_pixels(aug, L->max_pixels);
    struct io_uring uring_s, *uring = NULL;
    int qd = L->opt->queue_depth;
    if (L->use_uring) {
        int rc = io_uring_queue_init((unsigned)qd, &uring_s, 0);
        if (rc < 0)
            worker_fail(ring, "io_uring_queue_init(): %s", strerror(-rc));
        uring = &uring_s;
    }
    read_buf *bufs = calloc((size_t)qd, sizeof *bufs);
    uint64_t *perm = malloc((L->records ? L->records : 1) * sizeof *perm);
    if (!bufs || !perm)
        worker_fail(ring, "out of memory for the epoch order of %llu records", (unsigned long long)L->records);
    uint64_t perm_epoch = UINT64_MAX, e, b;
    for (uint64_t k = ring->local; amdim_loader_worker_batch(L->e0, L->b0, L->epochs, L->nb, L->W, w, k, &e, &b); k++) {
        if (e != perm_epoch) {
            amdim_loader_epoch_order(L->seed, e, L->records, perm);
            perm_epoch = e;
        }
        amdim_slot slot;
        uint64_t t0 = now_ns();
        int rc;
        atomic_store_explicit(&ring->hdr->phase, AMDIM_PHASE_SLOT, memory_order_relaxed);
        atomic_fetch_add_explicit(&ring->hdr->progress, 1, memory_order_relaxed);
        while ((rc = amdim_ring_acquire(ring, &slot, 200, NULL)) == 1)
            if (getppid() != L->parent)
                _exit(1);
        atomic_fetch_add_explicit(&L->stats[w].slot_wait_ns, now_ns() - t0, memory_order_relaxed);
        uint32_t count = loader_batch_count(L->records, L->B, b); /* N > 1: always whole batches */
        slot.header->magic = AMDIM_SLOT_MAGIC;
        slot.header->count = count;
        slot.header->epoch = e;
        slot.header->batch_index = b;
        slot.header->ring_id = w;
        fill_batch(L, w, aug, uring, bufs, perm, &slot, e, b, count);
        amdim_ring_publish(ring);
        atomic_fetch_add_explicit(&L->stats[w].pairs, count, memory_order_relaxed);
    }
    amdim_ring_set_state(ring, AMDIM_PRODUCER_FINISHED, NULL);
    _exit(0);
}

/* ---- supervisor --------------------------------------------------------- */

static int spawn(loader *L, uint32_t w)
{
    pid_t pid = fork();
    if (pid < 0)
        return amdim_fail(L->err, L->errlen, AMDIM_E_IO, "fork(): %s", strerror(errno));
    if (pid == 0)
        worker_main(L, w);
    L->pids[w] = pid;
    L->state[w] = 0;
    L->pidfds[w] = (int)syscall(SYS_pidfd_open, pid, 0);
    if (L->pidfds[w] < 0)
        return amdim_fail(L->err, L->errlen, AMDIM_E_IO, "pidfd_open(): %s", strerror(errno));
    fprintf(stderr, "amdim-load: worker %u pid %d\n", w, (int)pid);
    return AMDIM_OK;
}

/* The kernel's count of processes its out-of-memory killer ended (0 if
 * /proc/vmstat cannot be read). */
static uint64_t oom_kills(void)
{
    FILE *f = fopen("/proc/vmstat", "re");
    unsigned long long n = 0;
    char line[128];
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "oom_kill %llu", &n) == 1)
            break;
    if (f)
        fclose(f);
    return n;
}

/* Words after "killed by signal N": for SIGKILL, whether the OOM killer
 * is the likely sender (its count rose since the workers started). */
static void kill_hint(loader *L, int sig, char *buf, size_t n)
{
    buf[0] = 0;
    if (sig != SIGKILL)
        return;
    uint64_t k = oom_kills();
    if (k > L->oom_kills0)
        snprintf(buf, n, ", probably by the kernel's out-of-memory killer (oom_kill in /proc/vmstat rose by %llu; "
                         "see dmesg): lower --batch, --slots or --workers",
                 (unsigned long long)(k - L->oom_kills0));
    else
        snprintf(buf, n, " (SIGKILL: sent by another process or by the kernel's out-of-memory killer; see dmesg)");
}

static void kill_workers(loader *L)
{
    for (uint32_t w = 0; w < L->W; w++)
        if (L->pids[w] > 0 && L->state[w] == 0) {
            kill(L->pids[w], SIGKILL);
            waitpid(L->pids[w], NULL, 0);
            L->state[w] = 2;
        }
}

/* Connections that are not the consumer: the first few are logged, then
 * one summary line per interval, so that another local user (one connect
 * per line) cannot fill the log. */
#define INTRUDERS_SHOWN 5
#define INTRUDERS_SUMMARY_SECONDS 10.0

static void intruder_summary(loader *L, double now)
{
    if (!L->intruders_unshown)
        return;
    fprintf(stderr,
            "amdim-load: refused or dropped %llu more connections that were not the consumer in the last %.0f s "
            "(%llu in all); still waiting for the consumer\n",
            (unsigned long long)L->intruders_unshown, now - L->intruders_t, (unsigned long long)L->intruders);
    L->intruders_unshown = 0;
    L->intruders_t = now;
}

static void log_intruder(loader *L, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void log_intruder(loader *L, const char *fmt, ...)
{
    double now = amdim_now();
    if (++L->intruders <= INTRUDERS_SHOWN) {
        va_list ap;
        va_start(ap, fmt);
        vfprintf(stderr, fmt, ap);
        va_end(ap);
        if (L->intruders == INTRUDERS_SHOWN)
            fprintf(stderr, "amdim-load: %d connections that were not the consumer; further ones are counted in one "
                            "line every %.0f s\n", INTRUDERS_SHOWN, INTRUDERS_SUMMARY_SECONDS);
        L->intruders_t = now;
        return;
    }
    L->intruders_unshown++;
    if (now - L->intruders_t >= INTRUDERS_SUMMARY_SECONDS)
        intruder_summary(L, now);
}

/* Reads the consumer's START line (with a deadline) and answers it. */
static int handshake(loader *L)
{
    const amdim_loader_serve_options *opt = L->opt;
again:
    /* Wait for the consumer, watching for it to vanish instead. */
    for (;;) {
        if (opt->cancel && *opt->cancel)
            return amdim_fail(L->err, L->errlen, AMDIM_E_CANCELLED, "interrupted");
        if (L->intruders_unshown && amdim_now() - L->intruders_t >= INTRUDERS_SUMMARY_SECONDS)
            intruder_summary(L, amdim_now());
        struct pollfd p[2] = {{L->listen_fd, POLLIN, 0}, {opt->out_fd, 0, 0}};
        int n = poll(p, 2, 200);
        if (n < 0 && errno != EINTR)
            return amdim_fail(L->err, L->errlen, AMDIM_E_IO, "poll(): %s", strerror(errno));
        if (n > 0 && (p[1].revents & (POLLERR | POLLHUP)))
            return amdim_fail(L->err, L->errlen, AMDIM_E_PROTOCOL, "the consumer closed the pipe before connecting");
        if (n > 0 && (p[0].revents & POLLIN))
            break;
    }
    /* The socket's name is visible to every local user: a connection that
     * is not our consumer (another user, or one that sends no START within
     * 10 s) is answered, closed and forgotten, and we keep listening. */
    int fd = accept4(L->listen_fd, NULL, NULL, SOCK_CLOEXEC);
    if (fd < 0) {
        if (errno == EINTR || errno == ECONNABORTED || errno == EAGAIN)
            goto again;
        return amdim_fail(L->err, L->errlen, AMDIM_E_IO, "accept(): %s", strerror(errno));
    }
    struct ucred cred = {0};
    socklen_t cl = sizeof cred;
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &cl) != 0 || cred.uid != getuid()) {
        ctl_write(fd, "ERR the consumer must run as the same user");
        close(fd);
        log_intruder(L, "amdim-load: refused a connection from uid %d (pid %d): not this user; still waiting for the consumer\n",
                     (int)cred.uid, (int)cred.pid);
        goto again;
    }
    char line[512];
    size_t got = 0;
    double deadline = amdim_now() + 10;
    const char *why = NULL;
    while (!why && got < sizeof line - 1 && !memchr(line, '\n', got)) {
        struct pollfd p = {fd, POLLIN, 0};
        if (poll(&p, 1, 200) > 0) {
            ssize_t r = read(fd, line + got, sizeof line - 1 - got);
            if (r <= 0)
                why = "it disconnected before START";
            else
                got += (size_t)r;
        }
        if (!why && amdim_now() > deadline)
            why = "no START within 10 s";
        line[got] = 0;
    }
    line[got] = 0;
    if (!why && strncmp(line, "START", 5) != 0)
        why = "it did not send START";
    if (why) {
        ctl_write(fd, "ERR expected START");
        close(fd);
        log_intruder(L, "amdim-load: dropped a connection from pid %d: %s; still waiting for the consumer\n",
                     (int)cred.pid, why);
        goto again;
    }
    intruder_summary(L, amdim_now());
    L->conn_fd = fd;
    char v[64];
    L->seed = opt->seed;
    L->e0 = 0;
    L->b0 = 0;
    L->epochs = (uint64_t)opt->epochs;
    if (amdim_loader_kv(line, "seed", v, sizeof v))
        L->seed = strtoull(v, NULL, 10);
    if (amdim_loader_kv(line, "epoch", v, sizeof v))
        L->e0 = strtoull(v, NULL, 10);
    if (amdim_loader_kv(line, "batch", v, sizeof v))
        L->b0 = strtoull(v, NULL, 10);
    if (amdim_loader_kv(line, "epochs", v, sizeof v))
        L->epochs = strtoull(v, NULL, 10);
    if (L->b0 >= L->nb || L->epochs == 0) {
        ctl_write(L->conn_fd, "ERR start batch %llu is outside 0..%llu or no epochs requested",
                  (unsigned long long)L->b0, (unsigned long long)L->nb - 1);
        return amdim_fail(L->err, L->errlen, AMDIM_E_PROTOCOL, "the consumer asked for batch %llu of %llu, epochs %llu", (unsigned long long)L->b0,
                     (unsigned long long)L->nb, (unsigned long long)L->epochs);
    }
    /* Answer with the agreed values and the rings. */
    char ok[256];
    int n = snprintf(ok, sizeof ok, "OK seed=%llu epoch=%llu batch=%llu epochs=%llu rings=%u\n",
                     (unsigned long long)L->seed, (unsigned long long)L->e0, (unsigned long long)L->b0,
                     (unsigned long long)L->epochs, L->W);
    union {
        char buf[CMSG_SPACE(sizeof(int) * 253)];
        struct cmsghdr align;
    } u;
    if (L->W > 253)
        return amdim_fail(L->err, L->errlen, AMDIM_E_INVALID, "at most 253 workers");
    memset(&u, 0, sizeof u);
    struct iovec iov = {ok, (size_t)n};
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.buf,
                         .msg_controllen = CMSG_SPACE(sizeof(int) * L->W)};
    struct cmsghdr *cm = CMSG_FIRSTHDR(&msg);
    cm->cmsg_level = SOL_SOCKET;
    cm->cmsg_type = SCM_RIGHTS;
    cm->cmsg_len = CMSG_LEN(sizeof(int) * L->W);
    for (uint32_t w = 0; w < L->W; w++)
        memcpy(CMSG_DATA(cm) + w * sizeof(int), &L->rings[w].fd, sizeof(int));
    if (sendmsg(L->conn_fd, &msg, MSG_NOSIGNAL) != n)
        return amdim_fail(L->err, L->errlen, AMDIM_E_PROTOCOL, "sending the rings to the consumer: %s", strerror(errno));
    close(L->listen_fd);
    L->listen_fd = -1;
    return AMDIM_OK;
}

/* The batch worker w holds next (after `published` batches). */
static void held_batch(loader *L, uint32_t w, uint64_t *e, uint64_t *b)
{
    uint64_t k = atomic_load(&L->rings[w].hdr->head);
    if (!amdim_loader_worker_batch(L->e0, L->b0, L->epochs, L->nb, L->W, w, k, e, b))
        *e = *b = UINT64_MAX;
}

/* Batches worker w makes in epochs e0 .. e (inclusive). */
static uint64_t batches_through(loader *L, uint32_t w, uint64_t e)
{
    uint64_t n = 0, ee, bb;
    while (amdim_loader_worker_batch(L->e0, L->b0, L->epochs, L->nb, L->W, w, n, &ee, &bb) && ee <= e)
        n++;
    return n;
}

/* Drains what the consumer sent after START: 1 if it said STOP (a
 * deliberate end), 2 if ABORT (it gave up on an error it reported). */
static int read_stop(int fd)
{
    char buf[256];
    int stop = 0;
    ssize_t r;
    while ((r = recv(fd, buf, sizeof buf - 1, MSG_DONTWAIT)) > 0) {
        buf[r] = 0;
        if (strstr(buf, "STOP"))
            stop |= 1;
        if (strstr(buf, "ABORT"))
            stop |= 2;
    }
    return stop;
}

static int supervise(loader *L)
{
    const amdim_loader_serve_options *opt = L->opt;
    double interval = opt->progress_interval > 0 ? opt->progress_interval : 10.0;
    double t_start = amdim_now(), t_last = t_start;
    uint64_t last_pairs = 0, epoch_marked = L->e0;
    uint64_t *last_io = calloc(L->W, sizeof *last_io), *last_slot = calloc(L->W, sizeof *last_slot);
    /* stalled workers: no progress (and not waiting for the consumer) for this long */
    double stall = amdim_loader_stall_seconds("AMDIM_LOAD_STALL_SECONDS");
    uint32_t *last_prog = calloc(L->W, sizeof *last_prog);
    double *last_change = calloc(L->W, sizeof *last_change);
    int st = AMDIM_OK, consumer_stopped = 0;
    if (!last_io || !last_slot || !last_prog || !last_change) {
        st = amdim_fail(L->err, L->errlen, AMDIM_E_NOMEM, "out of memory");
        goto out;
    }
    for (uint32_t w = 0; w < L->W; w++)
        last_change[w] = t_start;
    for (;;) {
        int running = 0;
        for (uint32_t w = 0; w < L->W; w++)
            running += L->state[w] == 0;
        if (!running)
            break;
        if (opt->cancel && *opt->cancel) {
            st = amdim_fail(L->err, L->errlen, AMDIM_E_CANCELLED, "interrupted");
            break;
        }
        struct pollfd p[2 + 256];
        int np = 0;
        p[np++] = (struct pollfd){L->conn_fd, POLLIN | POLLRDHUP, 0};
        p[np++] = (struct pollfd){opt->out_fd, 0, 0};
        for (uint32_t w = 0; w < L->W; w++)
            p[np++] = (struct pollfd){L->state[w] == 0 ? L->pidfds[w] : -1, POLLIN, 0};
        int n = poll(p, (nfds_t)np, 200);
        if (n < 0 && errno != EINTR) {
            st = amdim_fail(L->err, L->errlen, AMDIM_E_IO, "poll(): %s", strerror(errno));
            break;
        }
        if (n > 0 && (p[0].revents & POLLIN)) /* nothing but STOP is expected after START */
            consumer_stopped |= read_stop(L->conn_fd);
        if (n > 0 && ((p[0].revents & (POLLHUP | POLLRDHUP | POLLERR)) || (p[1].revents & (POLLERR | POLLHUP)))) {
            /* Consumer gone. If a worker failed first (the consumer may have
             * read its failure from the ring before we reaped it), say so. */
            st = consumer_stopped == 1 ? 1
                 : consumer_stopped ? amdim_fail(L->err, L->errlen, AMDIM_E_PROTOCOL, "the consumer gave up on an error (see its message)")
                                    : amdim_fail(L->err, L->errlen, AMDIM_E_PROTOCOL, "the consumer went away without stopping (was it killed?)");
            int finished = 1;
            for (uint32_t w = 0; w < L->W; w++)
                finished &= atomic_load(&L->rings[w].hdr->producer_state) == AMDIM_PRODUCER_FINISHED;
            if (finished) { /* everything was produced; the consumer simply finished first */
                st = AMDIM_OK;
                for (uint32_t w = 0; w < L->W; w++)
                    if (L->state[w] == 0) {
                        waitpid(L->pids[w], NULL, 0);
                        L->state[w] = 1;
                    }
                break;
            }
            for (uint32_t w = 0; w < L->W; w++)
                if (atomic_load(&L->rings[w].hdr->producer_state) == AMDIM_PRODUCER_FAILED) {
                    char why[AMDIM_RING_ERROR_MAX];
                    amdim_ring_get_error(&L->rings[w], why, sizeof why);
                    fprintf(stderr, "amdim-load: worker %u: %s\n", w, why);
                    st = amdim_fail(L->err, L->errlen, AMDIM_E_WORKER, "worker %u: %s", w, why);
                    break;
                }
            break;
        }
        for (uint32_t w = 0; n > 0 && w < L->W; w++) {
            if (!(p[2 + w].revents & POLLIN))
                continue;
            int status;
            if (waitpid(L->pids[w], &status, 0) != L->pids[w])
                continue;
            close(L->pidfds[w]);
            L->pidfds[w] = -1;
            if (WIFEXITED(status) && WEXITSTATUS(status) == 0) {
                L->state[w] = 1;
                continue;
            }
            uint64_t e, b;
            held_batch(L, w, &e, &b);
            char msg[AMDIM_RING_ERROR_MAX + 64];
            if (WIFSIGNALED(status)) {
                int sig = WTERMSIG(status);
                char hint[256];
                kill_hint(L, sig, hint, sizeof hint);
                if (L->respawns[w] < opt->respawn) {
                    L->respawns[w]++;
                    fprintf(stderr, "amdim-load: worker %u (pid %d) killed by signal %d (%s) while making epoch %llu batch %llu%s; respawning it (%d of %d)\n",
                            w, (int)L->pids[w], sig, strsignal(sig), (unsigned long long)e, (unsigned long long)b,
                            hint, L->respawns[w], opt->respawn);
                    ctl_write(opt->out_fd, "RESPAWN worker=%u signal=%d epoch=%llu batch=%llu", w, sig,
                              (unsigned long long)e, (unsigned long long)b);
                    if ((st = spawn(L, w)))
                        break;
                    continue;
                }
                snprintf(msg, sizeof msg, "worker %u (pid %d) killed by signal %d (%s) while making epoch %llu batch %llu%s",
                         w, (int)L->pids[w], sig, strsignal(sig), (unsigned long long)e, (unsigned long long)b, hint);
                amdim_ring_set_state(&L->rings[w], AMDIM_PRODUCER_FAILED, msg);
            } else {
                char why[AMDIM_RING_ERROR_MAX];
                amdim_ring_get_error(&L->rings[w], why, sizeof why);
                snprintf(msg, sizeof msg, "worker %u: %s", w, why[0] ? why : "exited with an error");
            }
            L->state[w] = 2;
            fprintf(stderr, "amdim-load: %s\n", msg);
            ctl_write(opt->out_fd, "ERROR worker=%u epoch=%llu batch=%llu %s", w, (unsigned long long)e,
                      (unsigned long long)b, msg);
            st = amdim_fail(L->err, L->errlen, AMDIM_E_WORKER, "%s", msg);
        }
        if (st)
            break;
        /* Epoch marks: every worker has published its batches of the epoch. */
        while (epoch_marked < L->e0 + L->epochs) {
            int complete = 1;
            for (uint32_t w = 0; w < L->W && complete; w++)
                complete = atomic_load(&L->rings[w].hdr->head) >= batches_through(L, w, epoch_marked);
            if (!complete)
                break;
            ctl_write(opt->out_fd, "EPOCH %llu produced", (unsigned long long)epoch_marked);
            uint64_t pairs = 0;
            for (uint32_t w = 0; w < L->W; w++)
                pairs += atomic_load(&L->stats[w].pairs);
            double el = amdim_now() - t_start;
            fprintf(stderr, "amdim-load: epoch %llu produced: %llu pairs so far, %.0f pairs/s overall\n",
                    (unsigned long long)epoch_marked, (unsigned long long)pairs, el > 0 ? pairs / el : 0.0);
            epoch_marked++;
        }
        double now = amdim_now();
        for (uint32_t w = 0; stall > 0 && w < L->W; w++) {
            const amdim_ring_header *h = L->rings[w].hdr;
            uint32_t pg = atomic_load(&h->progress), phase = atomic_load(&h->phase);
            int full = atomic_load(&h->head) - atomic_load(&h->tail) >= L->rings[w].geom.slot_count;
            if (L->state[w] != 0 || pg != last_prog[w] || full) {
                last_prog[w] = pg; /* working, done, or its ring is full (the consumer is slower): not stalled */
                last_change[w] = now;
            } else if (now - last_change[w] >= stall) {
                const char *state, *doing;
                int pid = atomic_load(&h->producer_pid);
                amdim_loader_describe_worker(pid, phase, &state, &doing);
                fprintf(stderr, "amdim-load: worker %u (pid %d) has made no progress for %.0f s: it is %s, %s\n", w,
                        pid, now - last_change[w], state, doing);
                last_change[w] = now; /* again after another `stall` seconds */
            }
        }
        if (now - t_last >= interval) {
            uint64_t pairs = 0;
            char line[2048];
            int len = 0;
            for (uint32_t w = 0; w < L->W; w++) {
                uint64_t io = atomic_load(&L->stats[w].io_wait_ns), sl = atomic_load(&L->stats[w].slot_wait_ns);
                pairs += atomic_load(&L->stats[w].pairs);
                if (len < (int)sizeof line - 64)
                    len += snprintf(line + len, sizeof line - (size_t)len, " w%u io %.0f%% full %.0f%%;", w,
                                    100.0 * (double)(io - last_io[w]) * 1e-9 / (now - t_last),
                                    100.0 * (double)(sl - last_slot[w]) * 1e-9 / (now - t_last));
                last_io[w] = io;
                last_slot[w] = sl;
            }
            fprintf(stderr, "amdim-load: %llu pairs, %.0f pairs/s; stalls (waiting for reads / for a free slot):%s\n",
                    (unsigned long long)pairs, (double)(pairs - last_pairs) / (now - t_last), line);
            last_pairs = pairs;
            t_last = now;
        }
    }
out:
    free(last_io);
    free(last_slot);
    free(last_prog);
    free(last_change);
    return st;
}

/* Once a slow consumer lets them fill, the rings of every worker are
 * resident memory: refuse, before creating any, rings that would not fit
 * beside the consumer. They may take half of what the process may still
 * allocate; the rest is the consumer's (a trainer's model, its copies of
 * the batches), the decoders' and the page cache's. */
static int check_ring_memory(loader *L)
{
    const amdim_loader_serve_options *opt = L->opt;
    uint32_t size = (uint32_t)L->aug.size;
    uint64_t ring = amdim_ring_total_bytes((uint32_t)opt->slots, L->B, size, size, 3);
    uint64_t total = ring * L->W, avail;
    char why[256], t[32], a[32], sl[32];
    int st = amdim_mem_available(&avail, why, sizeof why);
    if (st) {
        fprintf(stderr, "amdim-load: warning: cannot tell how much memory is available (%s); not checking the "
                        "size of the rings\n", why);
        return AMDIM_OK;
    }
    if (total <= avail / 2)
        return AMDIM_OK;
    amdim_format_bytes(t, sizeof t, total);
    amdim_format_bytes(a, sizeof a, avail);
    amdim_format_bytes(sl, sizeof sl, amdim_ring_slot_bytes(L->B, size, size, 3));
    return amdim_fail(L->err, L->errlen, AMDIM_E_TOO_LARGE,
                 "the rings need %s (--workers %u x --slots %d x %s per batch of --batch %u %ux%u pairs), more than "
                 "half of the %s this process may still use (%s): lower --slots, --batch or --workers",
                 t, L->W, opt->slots, sl, L->B, size, size, a, why);
}

int amdim_loader_serve(const amdim_loader_serve_options *opt, char *err, size_t errlen)
{
    loader Lv, *L = &Lv;
    memset(L, 0, sizeof *L);
    L->opt = opt;
    L->err = err;
    L->errlen = errlen;
    L->data_fd = L->listen_fd = L->conn_fd = -1;
    L->parent = getpid();
    int st;
    const char *split = opt->split ? opt->split : "train";
    if (opt->workers < 1 || opt->workers > 253 || opt->batch < 1 || opt->slots < 2 || opt->queue_depth < 1 ||
        opt->queue_depth > 256 || opt->epochs < 1)
        return amdim_fail(L->err, L->errlen, AMDIM_E_INVALID, "workers 1..253, batch >= 1, slots >= 2, queue depth 1..256 and epochs >= 1");
    L->W = (uint32_t)opt->workers;
    L->N = opt->shard_size > 1 ? (uint32_t)opt->shard_size : 1;
    L->R = L->N > 1 ? (uint32_t)opt->shard_rank : 0;
    if (L->N > 1 && (opt->shard_rank < 0 || L->R >= L->N || opt->batch % (int)L->N != 0 || opt->keep_last))
        return amdim_fail(L->err, L->errlen, AMDIM_E_INVALID,
                     "--shard %d/%u: needs 0 <= rank < %u, a global --batch divisible by %u (got %d), and no --keep-last",
                     opt->shard_rank, L->N, L->N, L->N, opt->batch);
    L->B = (uint32_t)opt->batch / L->N;
    char why[1024];
    if ((st = amdim_dataset_open(&L->ds, opt->path, why, sizeof why)))
        return amdim_fail(L->err, L->errlen, st, "%s", why);
    if ((st = amdim_dataset_split_info(L->ds, split, &L->info))) {
        amdim_fail(L->err, L->errlen, st, "%s", amdim_dataset_error(L->ds));
        goto done;
    }
    /* Records larger than the packer let in are refused before decoding. */
    char key[96], opts[512];
    snprintf(key, sizeof key, "%s.options", split);
    const char *mp = amdim_dataset_meta(L->ds, key, opts, sizeof opts) == 0 ? strstr(opts, "max_pixels=") : NULL;
    if (mp)
        L->max_pixels = strtoull(mp + strlen("max_pixels="), NULL, 10);
    const char *preset = opt->preset ? opt->preset : amdim_loader_preset_for(L->info.encoding, L->info.width, L->info.height);
    if (amdim_augment_preset(preset, &L->aug)) {
        st = amdim_fail(L->err, L->errlen, AMDIM_E_INVALID, "unknown preset %s (imagenet, stl10, cifar)", preset);
        goto done;
    }
    if (L->aug.crop_mode == AMDIM_CROP_TRANSLATE && (L->info.width == 0 || L->info.width > (uint32_t)L->aug.size ||
                                                     L->info.height > (uint32_t)L->aug.size)) {
        st = amdim_fail(L->err, L->errlen, AMDIM_E_INVALID, "preset %s makes %dx%d views without resizing, but split %s holds %ux%u images",
                   preset, L->aug.size, L->aug.size, split, L->info.width, L->info.height);
        goto done;
    }
    if ((st = check_ring_memory(L)))
        goto done;
    if ((st = amdim_dataset_index(L->ds, split, &L->offsets, &L->lengths, &L->records))) {
        amdim_fail(L->err, L->errlen, st, "%s", amdim_dataset_error(L->ds));
        goto done;
    }
    L->nb = loader_batches(L->records, L->B * L->N, opt->keep_last);
    if (L->nb == 0) {
        st = amdim_fail(L->err, L->errlen, AMDIM_E_INVALID, "split %s has %llu records, fewer than one batch of %u", split,
                   (unsigned long long)L->records, L->B * L->N);
        goto done;
    }
    L->data_fd = open(opt->path, O_RDONLY | O_CLOEXEC);
    if (L->data_fd < 0) {
        st = amdim_fail(L->err, L->errlen, AMDIM_E_IO, "open %s: %s", opt->path, strerror(errno));
        goto done;
    }
    /* io_uring or pread, decided once for every worker. */
    L->use_uring = !opt->no_uring;
    if (L->use_uring) {
        struct io_uring probe;
        int rc = io_uring_queue_init(4, &probe, 0);
        if (rc < 0) {
            fprintf(stderr, "amdim-load: warning: io_uring is unavailable (%s); reading with pread\n", strerror(-rc));
            L->use_uring = 0;
        } else {
            io_uring_queue_exit(&probe);
        }
    }
    L->rings = calloc(L->W, sizeof *L->rings);
    L->pids = calloc(L->W, sizeof *L->pids);
    L->pidfds = calloc(L->W, sizeof *L->pidfds);
    L->state = calloc(L->W, sizeof *L->state);
    L->respawns = calloc(L->W, sizeof *L->respawns);
    L->stats = mmap(NULL, L->W * sizeof *L->stats, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (!L->rings || !L->pids || !L->pidfds || !L->state || !L->respawns || L->stats == MAP_FAILED) {
        L->stats = NULL;
        st = amdim_fail(L->err, L->errlen, AMDIM_E_NOMEM, "out of memory");
        goto done;
    }
    for (uint32_t w = 0; w < L->W; w++)
        L->rings[w].fd = -1;
    for (uint32_t w = 0; w < L->W; w++)
        if ((st = amdim_ring_create(&L->rings[w], (uint32_t)opt->slots, L->B, (uint32_t)L->aug.size,
                                    (uint32_t)L->aug.size, 3, w, L->W, why, sizeof why))) {
            amdim_fail(L->err, L->errlen, st, "%s", why);
            goto done;
        }
    /* Abstract Unix socket: no file system entry to leave behind. */
    uint8_t rnd[8] = {0};
    if (getrandom(rnd, sizeof rnd, 0) != (ssize_t)sizeof rnd)
        for (int i = 0; i < 8; i++) rnd[i] = (uint8_t)(now_ns() >> (8 * i));
    snprintf(L->sockname, sizeof L->sockname, "amdim-load-%d-%02x%02x%02x%02x%02x%02x%02x%02x", (int)getpid(), rnd[0],
             rnd[1], rnd[2], rnd[3], rnd[4], rnd[5], rnd[6], rnd[7]);
    L->listen_fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    memcpy(addr.sun_path + 1, L->sockname, strlen(L->sockname));
    socklen_t alen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + strlen(L->sockname));
    if (L->listen_fd < 0 || bind(L->listen_fd, (struct sockaddr *)&addr, alen) != 0 || listen(L->listen_fd, 1) != 0) {
        st = amdim_fail(L->err, L->errlen, AMDIM_E_IO, "cannot listen on the control socket: %s", strerror(errno));
        goto done;
    }
    if (ctl_write(opt->out_fd,
                  "AMDIM-LOAD v=%d pid=%d socket=%s preset=%s size=%d batch=%u workers=%u records=%llu classes=%d "
                  "batches=%llu drop_last=%d seed=%llu epochs=%lld start_epoch=0 start_batch=0 split=%s shard=%u/%u",
                  AMDIM_LOAD_PROTOCOL_VERSION, (int)getpid(), L->sockname, preset, L->aug.size, L->B, L->W,
                  (unsigned long long)L->records, L->info.classes, (unsigned long long)L->nb, !opt->keep_last,
                  (unsigned long long)opt->seed, (long long)opt->epochs, split, L->R, L->N) != 0) {
        st = amdim_fail(L->err, L->errlen, AMDIM_E_PROTOCOL, "cannot write the handshake: the consumer is gone");
        goto done;
    }
    if ((st = handshake(L)))
        goto done;
    if (L->N > 1)
        fprintf(stderr, "amdim-load: shard %u of %u: %u pairs of every global batch of %u\n", L->R, L->N, L->B,
                L->B * L->N);
    fprintf(stderr, "amdim-load: %s split %s: %llu records, preset %s (%dx%d views), batch %u, %llu batches/epoch%s, "
                    "%u workers, seed %llu, epochs %llu..%llu from batch %llu, %s reads, %s decode, %s\n",
            opt->path, split, (unsigned long long)L->records, preset, L->aug.size, L->aug.size, L->B,
            (unsigned long long)L->nb, opt->keep_last ? " (last one partial)" : "", L->W, (unsigned long long)L->seed,
            (unsigned long long)L->e0, (unsigned long long)(L->e0 + L->epochs - 1), (unsigned long long)L->b0,
            L->use_uring ? "io_uring" : "pread",
            opt->decode == AMDIM_LOAD_DECODE_FULL ? "full" : opt->decode == AMDIM_LOAD_DECODE_REGION ? "region" : "scaled",
            amdim_simd_name(amdim_simd_detect()));
    L->oom_kills0 = oom_kills();
    for (uint32_t w = 0; w < L->W; w++)
        if ((st = spawn(L, w)))
            goto done;
    double t0 = amdim_now();
    st = supervise(L);
    if (st == 1) {
        fprintf(stderr, "amdim-load: the consumer closed the pipe; stopping the workers\n");
        st = AMDIM_OK;
    } else if (st == AMDIM_OK) {
        uint64_t pairs = 0;
        for (uint32_t w = 0; w < L->W; w++)
            pairs += atomic_load(&L->stats[w].pairs);
        double dt = amdim_now() - t0;
        ctl_write(opt->out_fd, "END pairs=%llu", (unsigned long long)pairs);
        fprintf(stderr, "amdim-load: done: %llu pairs in %.1f s (%.0f pairs/s)\n", (unsigned long long)pairs, dt,
                dt > 0 ? pairs / dt : 0.0);
    }
done:
    if (L->pids)
        kill_workers(L);
    /* A consumer still draining the rings must not wait for workers that
     * are gone: mark every unfinished ring with the reason. */
    if (L->rings && st != AMDIM_OK)
        for (uint32_t w = 0; w < L->W; w++)
            if (L->rings[w].base && atomic_load(&L->rings[w].hdr->producer_state) == AMDIM_PRODUCER_RUNNING)
                amdim_ring_set_state(&L->rings[w], AMDIM_PRODUCER_FAILED, err);
    if (L->pidfds)
        for (uint32_t w = 0; w < L->W; w++)
            if (L->pidfds[w] > 0)
                close(L->pidfds[w]);
    if (L->rings)
        for (uint32_t w = 0; w < L->W; w++)
            if (L->rings[w].base)
                amdim_ring_close(&L->rings[w]);
    if (L->stats)
        munmap(L->stats, L->W * sizeof *L->stats);
    if (L->listen_fd >= 0)
        close(L->listen_fd);
    if (L->conn_fd >= 0)
        close(L->conn_fd);
    if (L->data_fd >= 0)
        close(L->data_fd);
    free(L->rings);
    free(L->pids);
    free(L->pidfds);
    free(L->state);
    free(L->respawns);
    free(L->offsets);
    free(L->lengths);
    amdim_dataset_close(L->ds);
    return st;
}
