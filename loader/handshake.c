/* amdim-load's control channel: the lines it writes on the control pipe,
 * its abstract Unix socket, and the handshake with the consumer (wait for
 * its connection, read and check its START, answer OK with the rings),
 * refusing at a bounded log rate connections that are not the consumer. */
#include <errno.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "amdim_loader.h"
#include "amdim_ring.h"
#include "loader_internal.h"

int amdim_loader_ctl_write(int fd, const char *fmt, ...)
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

int amdim_loader_listen(amdim_producer *L)
{
    /* Abstract Unix socket: no file system entry to leave behind. */
    uint8_t rnd[8] = {0};
    if (getrandom(rnd, sizeof rnd, 0) != (ssize_t)sizeof rnd)
        for (int i = 0; i < 8; i++)
            rnd[i] = (uint8_t)(loader_now_ns() >> (8 * i));
    snprintf(L->sockname, sizeof L->sockname, "amdim-load-%d-%02x%02x%02x%02x%02x%02x%02x%02x", (int)getpid(), rnd[0],
             rnd[1], rnd[2], rnd[3], rnd[4], rnd[5], rnd[6], rnd[7]);
    L->listen_fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    memcpy(addr.sun_path + 1, L->sockname, strlen(L->sockname));
    socklen_t alen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + strlen(L->sockname));
    if (L->listen_fd < 0 || bind(L->listen_fd, (struct sockaddr *)&addr, alen) != 0 || listen(L->listen_fd, 1) != 0)
        return amdim_fail(L->err, L->errlen, AMDIM_E_IO, "cannot listen on the control socket: %s", strerror(errno));
    return AMDIM_OK;
}

int amdim_loader_announce(amdim_producer *L)
{
    const amdim_loader_serve_options *opt = L->opt;
    if (amdim_loader_ctl_write(
            opt->out_fd,
            "AMDIM-LOAD v=%d pid=%d socket=%s preset=%s size=%d batch=%u workers=%u records=%llu classes=%d "
            "batches=%llu drop_last=%d seed=%llu epochs=%lld start_epoch=0 start_batch=0 split=%s shard=%u/%u",
            AMDIM_LOAD_PROTOCOL_VERSION, (int)getpid(), L->sockname, L->preset, L->aug.size, L->B, L->W,
            (unsigned long long)L->records, L->info.classes, (unsigned long long)L->nb, !opt->keep_last,
            (unsigned long long)opt->seed, (long long)opt->epochs, L->split, L->R, L->N) != 0)
        return amdim_fail(L->err, L->errlen, AMDIM_E_PROTOCOL, "cannot write the handshake: the consumer is gone");
    return AMDIM_OK;
}

/* ---- connections that are not the consumer ------------------------------ */

/* The first few are logged, then one summary line per interval, so that
 * another local user (one connect per line) cannot fill the log. */
#define INTRUDERS_SHOWN 5
#define INTRUDERS_SUMMARY_SECONDS 10.0

static void intruder_summary(amdim_producer *L, double now)
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

static void log_intruder(amdim_producer *L, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void log_intruder(amdim_producer *L, const char *fmt, ...)
{
    double now = amdim_now();
    if (++L->intruders <= INTRUDERS_SHOWN) {
        va_list ap;
        va_start(ap, fmt);
        vfprintf(stderr, fmt, ap);
        va_end(ap);
        if (L->intruders == INTRUDERS_SHOWN)
            fprintf(stderr,
                    "amdim-load: %d connections that were not the consumer; further ones are counted in one "
                    "line every %.0f s\n",
                    INTRUDERS_SHOWN, INTRUDERS_SUMMARY_SECONDS);
        L->intruders_t = now;
        return;
    }
    L->intruders_unshown++;
    if (now - L->intruders_t >= INTRUDERS_SUMMARY_SECONDS)
        intruder_summary(L, now);
}

/* ---- the handshake ------------------------------------------------------- */

/* Waits until a connection is pending, watching for the consumer to vanish
 * (or *cancel) instead. */
static int wait_for_connection(amdim_producer *L)
{
    const amdim_loader_serve_options *opt = L->opt;
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
            return AMDIM_OK;
    }
}

/* Accepts the pending connection into *fd if it comes from this user.
 * Returns 0, 1 when there is none after all or it was refused (wait for
 * another), or AMDIM_E_IO. */
static int accept_connection(amdim_producer *L, int *fd, pid_t *pid)
{
    /* The socket's name is visible to every local user: a connection that
     * is not our consumer (another user, or one that sends no START within
     * 10 s) is answered, closed and forgotten, and we keep listening. */
    *fd = accept4(L->listen_fd, NULL, NULL, SOCK_CLOEXEC);
    if (*fd < 0) {
        if (errno == EINTR || errno == ECONNABORTED || errno == EAGAIN)
            return 1;
        return amdim_fail(L->err, L->errlen, AMDIM_E_IO, "accept(): %s", strerror(errno));
    }
    struct ucred cred = {0};
    socklen_t cl = sizeof cred;
    if (getsockopt(*fd, SOL_SOCKET, SO_PEERCRED, &cred, &cl) != 0 || cred.uid != getuid()) {
        amdim_loader_ctl_write(*fd, "ERR the consumer must run as the same user");
        close(*fd);
        log_intruder(L,
                     "amdim-load: refused a connection from uid %d (pid %d): not this user; still waiting for the "
                     "consumer\n",
                     (int)cred.uid, (int)cred.pid);
        return 1;
    }
    *pid = cred.pid;
    return AMDIM_OK;
}

/* Reads the START line from fd (peer `pid`) into line, within 10 s.
 * Returns 0, or 1 when the peer sent something else, nothing or went away
 * (fd is then answered, closed and logged). */
static int read_start(amdim_producer *L, int fd, pid_t pid, char *line, size_t size)
{
    size_t got = 0;
    double deadline = amdim_now() + 10;
    const char *why = NULL;
    while (!why && got < size - 1 && !memchr(line, '\n', got)) {
        struct pollfd p = {fd, POLLIN, 0};
        if (poll(&p, 1, 200) > 0) {
            ssize_t r = read(fd, line + got, size - 1 - got);
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
    if (!why)
        return AMDIM_OK;
    amdim_loader_ctl_write(fd, "ERR expected START");
    close(fd);
    log_intruder(L, "amdim-load: dropped a connection from pid %d: %s; still waiting for the consumer\n", (int)pid,
                 why);
    return 1;
}

/* Takes the consumer's seed, epoch, batch and epochs from its START line
 * (the loader's defaults where absent) and checks them. */
static int agree_start(amdim_producer *L, const char *line)
{
    char v[64];
    L->seed = L->opt->seed;
    L->e0 = 0;
    L->b0 = 0;
    L->epochs = (uint64_t)L->opt->epochs;
    if (amdim_loader_kv(line, "seed", v, sizeof v))
        L->seed = strtoull(v, NULL, 10);
    if (amdim_loader_kv(line, "epoch", v, sizeof v))
        L->e0 = strtoull(v, NULL, 10);
    if (amdim_loader_kv(line, "batch", v, sizeof v))
        L->b0 = strtoull(v, NULL, 10);
    if (amdim_loader_kv(line, "epochs", v, sizeof v))
        L->epochs = strtoull(v, NULL, 10);
    if (L->b0 >= L->nb || L->epochs == 0) {
        amdim_loader_ctl_write(L->conn_fd, "ERR start batch %llu is outside 0..%llu or no epochs requested",
                               (unsigned long long)L->b0, (unsigned long long)L->nb - 1);
        return amdim_fail(L->err, L->errlen, AMDIM_E_PROTOCOL, "the consumer asked for batch %llu of %llu, epochs %llu",
                          (unsigned long long)L->b0, (unsigned long long)L->nb, (unsigned long long)L->epochs);
    }
    return AMDIM_OK;
}

/* Answers with the agreed values and the rings' fds (SCM_RIGHTS). */
static int send_rings(amdim_producer *L)
{
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
    struct msghdr msg = {
        .msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.buf, .msg_controllen = CMSG_SPACE(sizeof(int) * L->W)};
    struct cmsghdr *cm = CMSG_FIRSTHDR(&msg);
    cm->cmsg_level = SOL_SOCKET;
    cm->cmsg_type = SCM_RIGHTS;
    cm->cmsg_len = CMSG_LEN(sizeof(int) * L->W);
    for (uint32_t w = 0; w < L->W; w++)
        memcpy(CMSG_DATA(cm) + w * sizeof(int), &L->rings[w].fd, sizeof(int));
    if (sendmsg(L->conn_fd, &msg, MSG_NOSIGNAL) != n)
        return amdim_fail(L->err, L->errlen, AMDIM_E_PROTOCOL, "sending the rings to the consumer: %s",
                          strerror(errno));
    return AMDIM_OK;
}

int amdim_loader_handshake(amdim_producer *L)
{
    char line[512];
    int fd = -1;
    pid_t pid = 0;
    for (;;) {
        AMDIM_TRY(wait_for_connection(L));
        int st = accept_connection(L, &fd, &pid);
        if (st < 0)
            return st;
        if (st == AMDIM_OK && read_start(L, fd, pid, line, sizeof line) == AMDIM_OK)
            break;
    }
    intruder_summary(L, amdim_now());
    L->conn_fd = fd;
    AMDIM_TRY(agree_start(L, line));
    AMDIM_TRY(send_rings(L));
    close(L->listen_fd);
    L->listen_fd = -1;
    return AMDIM_OK;
}
