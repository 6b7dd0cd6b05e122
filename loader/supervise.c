/* amdim-load's supervisor, the parent of the workers: forks them, then
 * watches them and the consumer until the end. It reaps the dead,
 * respawns those a signal killed (up to --respawn times each) and reports
 * the others, notices a consumer that went away, and prints epoch marks,
 * stalled workers and periodic progress. */
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "amdim_loader.h"
#include "amdim_ring.h"
#include "loader_internal.h"

/* ---- the worker processes ------------------------------------------------ */

static int spawn(amdim_producer *L, uint32_t w)
{
    pid_t pid = fork();
    if (pid < 0)
        return amdim_fail(L->err, L->errlen, AMDIM_E_IO, "fork(): %s", strerror(errno));
    if (pid == 0)
        amdim_loader_worker_main(L, w);
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

int amdim_loader_start_workers(amdim_producer *L)
{
    L->oom_kills0 = oom_kills();
    for (uint32_t w = 0; w < L->W; w++)
        AMDIM_TRY(spawn(L, w));
    return AMDIM_OK;
}

void amdim_loader_kill_workers(amdim_producer *L)
{
    for (uint32_t w = 0; w < L->W; w++)
        if (L->pids[w] > 0 && L->state[w] == 0) {
            kill(L->pids[w], SIGKILL);
            waitpid(L->pids[w], NULL, 0);
            L->state[w] = 2;
        }
}

/* ---- a worker's death ---------------------------------------------------- */

/* Words after "killed by signal N": for SIGKILL, whether the OOM killer
 * is the likely sender (its count rose since the workers started). */
static void kill_hint(amdim_producer *L, int sig, char *buf, size_t n)
{
    buf[0] = 0;
    if (sig != SIGKILL)
        return;
    uint64_t k = oom_kills();
    if (k > L->oom_kills0)
        snprintf(buf, n,
                 ", probably by the kernel's out-of-memory killer (oom_kill in /proc/vmstat rose by %llu; "
                 "see dmesg): lower --batch, --slots or --workers",
                 (unsigned long long)(k - L->oom_kills0));
    else
        snprintf(buf, n, " (SIGKILL: sent by another process or by the kernel's out-of-memory killer; see dmesg)");
}

/* The batch worker w holds: the next after those its ring's head says it
 * published (UINT64_MAX, UINT64_MAX when it has none left). */
static void held_batch(amdim_producer *L, uint32_t w, uint64_t *e, uint64_t *b)
{
    uint64_t k = atomic_load(&L->rings[w].hdr->head);
    if (!amdim_loader_worker_batch(L->e0, L->b0, L->epochs, L->nb, L->W, w, k, e, b))
        *e = *b = UINT64_MAX;
}

/* Worker w was killed by signal sig and may be replaced: says so (stderr,
 * a RESPAWN line) and forks another in its place. */
static int respawn(amdim_producer *L, uint32_t w, int sig)
{
    const amdim_loader_serve_options *opt = L->opt;
    uint64_t e, b;
    char hint[256];
    held_batch(L, w, &e, &b);
    kill_hint(L, sig, hint, sizeof hint);
    L->respawns[w]++;
    fprintf(stderr,
            "amdim-load: worker %u (pid %d) killed by signal %d (%s) while making epoch %llu batch %llu%s; "
            "respawning it (%d of %d)\n",
            w, (int)L->pids[w], sig, strsignal(sig), (unsigned long long)e, (unsigned long long)b, hint, L->respawns[w],
            opt->respawn);
    amdim_loader_ctl_write(opt->out_fd, "RESPAWN worker=%u signal=%d epoch=%llu batch=%llu", w, sig,
                           (unsigned long long)e, (unsigned long long)b);
    return spawn(L, w);
}

/* Worker w ended for good with wait status `status`: marks it failed and
 * says why on stderr, in an ERROR line and (for a signal, which left the
 * worker no chance to) in its ring. Returns AMDIM_E_WORKER. */
static int worker_failed(amdim_producer *L, uint32_t w, int status)
{
    uint64_t e, b;
    held_batch(L, w, &e, &b);
    char msg[AMDIM_RING_ERROR_MAX + 64];
    if (WIFSIGNALED(status)) {
        int sig = WTERMSIG(status);
        char hint[256];
        kill_hint(L, sig, hint, sizeof hint);
        snprintf(msg, sizeof msg, "worker %u (pid %d) killed by signal %d (%s) while making epoch %llu batch %llu%s", w,
                 (int)L->pids[w], sig, strsignal(sig), (unsigned long long)e, (unsigned long long)b, hint);
        amdim_ring_set_state(&L->rings[w], AMDIM_PRODUCER_FAILED, msg);
    } else {
        char why[AMDIM_RING_ERROR_MAX];
        amdim_ring_get_error(&L->rings[w], why, sizeof why);
        snprintf(msg, sizeof msg, "worker %u: %s", w, why[0] ? why : "exited with an error");
    }
    L->state[w] = 2;
    fprintf(stderr, "amdim-load: %s\n", msg);
    amdim_loader_ctl_write(L->opt->out_fd, "ERROR worker=%u epoch=%llu batch=%llu %s", w, (unsigned long long)e,
                           (unsigned long long)b, msg);
    return amdim_fail(L->err, L->errlen, AMDIM_E_WORKER, "%s", msg);
}

/* Reaps the workers whose pidfd (pidfds[w]) is readable: one that exited
 * 0 has finished, one killed by a signal is respawned while it has
 * respawns left, any other has failed. Returns 0, the status of the last
 * failure, or spawn's (which stops the sweep). */
static int reap_workers(amdim_producer *L, const struct pollfd *pidfds)
{
    int st = AMDIM_OK;
    for (uint32_t w = 0; w < L->W; w++) {
        if (!(pidfds[w].revents & POLLIN))
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
        if (WIFSIGNALED(status) && L->respawns[w] < L->opt->respawn) {
            int rc = respawn(L, w, WTERMSIG(status));
            if (rc) {
                st = rc;
                break;
            }
            continue;
        }
        st = worker_failed(L, w, status);
    }
    return st;
}

/* ---- the consumer -------------------------------------------------------- */

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

/* The consumer hung up, or the pipe broke (`stopped`: read_stop's bits so
 * far). Returns 0 if every worker had finished anyway (they are reaped),
 * 1 if it said STOP, else AMDIM_E_PROTOCOL, or AMDIM_E_WORKER naming a
 * failed worker (the consumer may have read its failure from the ring
 * before we reaped it). */
static int consumer_gone(amdim_producer *L, int stopped)
{
    int st = stopped == 1 ? 1
             : stopped
                 ? amdim_fail(L->err, L->errlen, AMDIM_E_PROTOCOL, "the consumer gave up on an error (see its message)")
                 : amdim_fail(L->err, L->errlen, AMDIM_E_PROTOCOL,
                              "the consumer went away without stopping (was it killed?)");
    int finished = 1;
    for (uint32_t w = 0; w < L->W; w++)
        finished &= atomic_load(&L->rings[w].hdr->producer_state) == AMDIM_PRODUCER_FINISHED;
    if (finished) { /* everything was produced; the consumer simply finished first */
        for (uint32_t w = 0; w < L->W; w++)
            if (L->state[w] == 0) {
                waitpid(L->pids[w], NULL, 0);
                L->state[w] = 1;
            }
        return AMDIM_OK;
    }
    for (uint32_t w = 0; w < L->W; w++)
        if (atomic_load(&L->rings[w].hdr->producer_state) == AMDIM_PRODUCER_FAILED) {
            char why[AMDIM_RING_ERROR_MAX];
            amdim_ring_get_error(&L->rings[w], why, sizeof why);
            fprintf(stderr, "amdim-load: worker %u: %s\n", w, why);
            return amdim_fail(L->err, L->errlen, AMDIM_E_WORKER, "worker %u: %s", w, why);
        }
    return st;
}

/* ---- progress ------------------------------------------------------------ */

/* What the supervisor remembers between polls for its reports. */
typedef struct {
    double interval;               /* seconds between progress lines */
    double t_start, t_last;        /* supervision began; the last progress line */
    uint64_t last_pairs;           /* pairs made at the last progress line */
    uint64_t *last_io, *last_slot; /* [W] each worker's wait counters then */
    uint64_t epoch_marked;         /* the next epoch to announce */
    double stall;                  /* no progress for this long (and not waiting for the consumer): stalled */
    uint32_t *last_prog;           /* [W] each worker's progress counter ... */
    double *last_change;           /* [W] ... and when it last changed (or was reported) */
    int consumer_stopped;          /* read_stop's bits so far */
} watch;

static void watch_free(watch *wt)
{
    free(wt->last_io);
    free(wt->last_slot);
    free(wt->last_prog);
    free(wt->last_change);
}

static int watch_init(amdim_producer *L, watch *wt)
{
    memset(wt, 0, sizeof *wt);
    wt->interval = L->opt->progress_interval > 0 ? L->opt->progress_interval : 10.0;
    wt->t_start = wt->t_last = amdim_now();
    wt->epoch_marked = L->e0;
    wt->last_io = calloc(L->W, sizeof *wt->last_io);
    wt->last_slot = calloc(L->W, sizeof *wt->last_slot);
    wt->stall = amdim_loader_stall_seconds("AMDIM_LOAD_STALL_SECONDS");
    wt->last_prog = calloc(L->W, sizeof *wt->last_prog);
    wt->last_change = calloc(L->W, sizeof *wt->last_change);
    if (!wt->last_io || !wt->last_slot || !wt->last_prog || !wt->last_change)
        return amdim_fail(L->err, L->errlen, AMDIM_E_NOMEM, "out of memory");
    for (uint32_t w = 0; w < L->W; w++)
        wt->last_change[w] = wt->t_start;
    return AMDIM_OK;
}

/* Batches worker w makes in epochs e0 .. e (inclusive). */
static uint64_t batches_through(amdim_producer *L, uint32_t w, uint64_t e)
{
    uint64_t n = 0, ee, bb;
    while (amdim_loader_worker_batch(L->e0, L->b0, L->epochs, L->nb, L->W, w, n, &ee, &bb) && ee <= e)
        n++;
    return n;
}

/* Epoch marks: "EPOCH e produced" once every worker has published its
 * batches of epoch e. */
static void mark_epochs(amdim_producer *L, watch *wt)
{
    while (wt->epoch_marked < L->e0 + L->epochs) {
        int complete = 1;
        for (uint32_t w = 0; w < L->W && complete; w++)
            complete = atomic_load(&L->rings[w].hdr->head) >= batches_through(L, w, wt->epoch_marked);
        if (!complete)
            break;
        amdim_loader_ctl_write(L->opt->out_fd, "EPOCH %llu produced", (unsigned long long)wt->epoch_marked);
        uint64_t pairs = 0;
        for (uint32_t w = 0; w < L->W; w++)
            pairs += atomic_load(&L->stats[w].pairs);
        double el = amdim_now() - wt->t_start;
        fprintf(stderr, "amdim-load: epoch %llu produced: %llu pairs so far, %.0f pairs/s overall\n",
                (unsigned long long)wt->epoch_marked, (unsigned long long)pairs, el > 0 ? pairs / el : 0.0);
        wt->epoch_marked++;
    }
}

/* Names each worker that has made no progress for wt->stall seconds,
 * again after every further wt->stall seconds. */
static void report_stalls(amdim_producer *L, watch *wt, double now)
{
    for (uint32_t w = 0; wt->stall > 0 && w < L->W; w++) {
        const amdim_ring_header *h = L->rings[w].hdr;
        uint32_t pg = atomic_load(&h->progress), phase = atomic_load(&h->phase);
        int full = atomic_load(&h->head) - atomic_load(&h->tail) >= L->rings[w].geom.slot_count;
        if (L->state[w] != 0 || pg != wt->last_prog[w] || full) {
            wt->last_prog[w] = pg; /* working, done, or its ring is full (the consumer is slower): not stalled */
            wt->last_change[w] = now;
        } else if (now - wt->last_change[w] >= wt->stall) {
            const char *state, *doing;
            int pid = atomic_load(&h->producer_pid);
            amdim_loader_describe_worker(pid, phase, &state, &doing);
            fprintf(stderr, "amdim-load: worker %u (pid %d) has made no progress for %.0f s: it is %s, %s\n", w, pid,
                    now - wt->last_change[w], state, doing);
            wt->last_change[w] = now; /* again after another `stall` seconds */
        }
    }
}

/* Every wt->interval seconds: pairs made, their rate, and the share of
 * time each worker waited for reads and for a free slot. */
static void report_progress(amdim_producer *L, watch *wt, double now)
{
    if (now - wt->t_last < wt->interval)
        return;
    uint64_t pairs = 0;
    char line[2048];
    int len = 0;
    for (uint32_t w = 0; w < L->W; w++) {
        uint64_t io = atomic_load(&L->stats[w].io_wait_ns), sl = atomic_load(&L->stats[w].slot_wait_ns);
        pairs += atomic_load(&L->stats[w].pairs);
        if (len < (int)sizeof line - 64)
            len += snprintf(line + len, sizeof line - (size_t)len, " w%u io %.0f%% full %.0f%%;", w,
                            100.0 * (double)(io - wt->last_io[w]) * 1e-9 / (now - wt->t_last),
                            100.0 * (double)(sl - wt->last_slot[w]) * 1e-9 / (now - wt->t_last));
        wt->last_io[w] = io;
        wt->last_slot[w] = sl;
    }
    fprintf(stderr, "amdim-load: %llu pairs, %.0f pairs/s; stalls (waiting for reads / for a free slot):%s\n",
            (unsigned long long)pairs, (double)(pairs - wt->last_pairs) / (now - wt->t_last), line);
    wt->last_pairs = pairs;
    wt->t_last = now;
}

/* ---- the loop ------------------------------------------------------------ */

static int running_workers(const amdim_producer *L)
{
    int running = 0;
    for (uint32_t w = 0; w < L->W; w++)
        running += L->state[w] == 0;
    return running;
}

/* Polls, for up to 200 ms, the consumer's connection (p[0]), the control
 * pipe (p[1]) and the running workers' pidfds (p[2 + w]). */
static int poll_all(amdim_producer *L, struct pollfd *p)
{
    int np = 0;
    p[np++] = (struct pollfd){L->conn_fd, POLLIN | POLLRDHUP, 0};
    p[np++] = (struct pollfd){L->opt->out_fd, 0, 0};
    for (uint32_t w = 0; w < L->W; w++)
        p[np++] = (struct pollfd){L->state[w] == 0 ? L->pidfds[w] : -1, POLLIN, 0};
    return poll(p, (nfds_t)np, 200);
}

int amdim_loader_supervise(amdim_producer *L)
{
    const amdim_loader_serve_options *opt = L->opt;
    watch wt;
    int st = watch_init(L, &wt);
    while (st == AMDIM_OK && running_workers(L) > 0) {
        if (opt->cancel && *opt->cancel) {
            st = amdim_fail(L->err, L->errlen, AMDIM_E_CANCELLED, "interrupted");
            break;
        }
        struct pollfd p[2 + 256];
        int n = poll_all(L, p);
        if (n < 0 && errno != EINTR) {
            st = amdim_fail(L->err, L->errlen, AMDIM_E_IO, "poll(): %s", strerror(errno));
            break;
        }
        if (n > 0 && (p[0].revents & POLLIN)) /* nothing but STOP is expected after START */
            wt.consumer_stopped |= read_stop(L->conn_fd);
        if (n > 0 && ((p[0].revents & (POLLHUP | POLLRDHUP | POLLERR)) || (p[1].revents & (POLLERR | POLLHUP)))) {
            st = consumer_gone(L, wt.consumer_stopped);
            break;
        }
        if (n > 0 && (st = reap_workers(L, p + 2)))
            break;
        mark_epochs(L, &wt);
        double now = amdim_now();
        report_stalls(L, &wt, now);
        report_progress(L, &wt, now);
    }
    watch_free(&wt);
    return st;
}
