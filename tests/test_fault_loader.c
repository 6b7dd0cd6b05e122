/* Connections to amdim-load's abstract socket that are not its consumer
 * (its name is visible to every local user in /proc/net/unix) must not
 * abort the pipeline: a process of another user (when the test runs as
 * root and can become one), one that sends junk and one that connects and
 * hangs up are each refused, and the real consumer, arriving after them,
 * gets every batch. A flood of such connections is logged as a few lines
 * and then a count, not one line each. The test is the consumer: it reads
 * the handshake line from amdim-load's pipe, connects the intruders, then
 * attaches with the loader API. Arguments: the amdim-load binary. */
#include <signal.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "amdim_loader.h"
#include "loader_fixtures.h"

static int connect_abstract(const char *name)
{
    int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    size_t n = strlen(name);
    memcpy(a.sun_path + 1, name, n);
    if (s < 0 || connect(s, (struct sockaddr *)&a, (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + n)) != 0) {
        if (s >= 0)
            close(s);
        return -1;
    }
    return s;
}

/* Waits for the loader to answer (or close) a connection. */
static void drain(int s)
{
    char buf[256];
    struct timeval tv = {10, 0};
    setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    while (read(s, buf, sizeof buf) > 0) {
    }
    close(s);
}

int main(int argc, char **argv)
{
    REQUIRE(argc == 2, "usage: test_fault_loader AMDIM-LOAD");
    char data[4200];
    snprintf(data, sizeof data, "%s", test_path("raw.lmdb"));
    fixture_raw(data, 60);
    int out[2];
    REQUIRE(pipe(out) == 0, "pipe");
    char errpath[4300];
    snprintf(errpath, sizeof errpath, "%s", test_path("load.err"));
    pid_t lp = fork();
    REQUIRE(lp >= 0, "fork");
    if (lp == 0) {
        dup2(out[1], 1);
        close(out[0]);
        close(out[1]);
        freopen(errpath, "w", stderr);
        execl(argv[1], argv[1], "--workers", "2", "--batch", "10", "--epochs", "2", data, (char *)NULL);
        _exit(127);
    }
    close(out[1]);
    /* The handshake line, byte by byte, leaving the rest in the pipe. */
    char line[1024];
    size_t got = 0;
    while (got < sizeof line - 1 && read(out[0], line + got, 1) == 1 && line[got] != '\n')
        got++;
    line[got] = 0;
    const char *s = strstr(line, "socket=");
    REQUIRE(s, "no handshake from amdim-load: '%s'", line);
    char name[108];
    snprintf(name, sizeof name, "%.*s", (int)strcspn(s + 7, " "), s + 7);

    /* 1. Another user (only root can become one). */
    int foreign = 0;
    if (geteuid() == 0) {
        pid_t c = fork();
        if (c == 0) {
            if (setgid(65534) != 0 || setuid(65534) != 0)
                _exit(77);
            signal(SIGPIPE, SIG_IGN); /* the loader may close first: it was still refused */
            int fd = connect_abstract(name);
            if (fd < 0)
                _exit(1);
            (void)!write(fd, "START\n", 6);
            drain(fd);
            _exit(0);
        }
        int ws;
        waitpid(c, &ws, 0);
        foreign = WIFEXITED(ws) && WEXITSTATUS(ws) == 0;
    }
    /* 2. Junk, then 3. a connection that hangs up at once. */
    int j = connect_abstract(name);
    REQUIRE(j >= 0, "connect");
    (void)!write(j, "GET / HTTP/1.0\n", 15);
    drain(j);
    j = connect_abstract(name);
    REQUIRE(j >= 0, "connect");
    close(j);
    /* 4. A flood of junk connections. */
    enum { FLOOD = 300 };
    for (int i = 0; i < FLOOD; i++) {
        j = connect_abstract(name);
        REQUIRE(j >= 0, "connect %d", i);
        (void)!send(j, "junk\n", 5, MSG_NOSIGNAL);
        drain(j);
    }

    /* The real consumer: the handshake line again, then the loader's pipe. */
    int cp[2];
    REQUIRE(pipe(cp) == 0, "pipe");
    (void)!write(cp[1], line, strlen(line));
    (void)!write(cp[1], "\n", 1);
    close(cp[1]);
    amdim_loader *l;
    char err[1024];
    int st = amdim_loader_attach(&l, cp[0], NULL, err, sizeof err);
    CHECK(st == 0, "the consumer could not attach after the intruders: %s", err);
    uint64_t batches = 0;
    if (st == 0) {
        amdim_batch b;
        while ((st = amdim_loader_next(l, &b)) == 0) {
            batches++;
            amdim_loader_release(l, &b);
        }
        CHECK(st == 1, "delivery stopped: %s", amdim_loader_error(l));
        amdim_loader_close(l);
    }
    CHECK(batches == 12, "%llu batches delivered, want 2 epochs of 6", (unsigned long long)batches);
    int ws;
    waitpid(lp, &ws, 0);
    char *lerr = test_read_file(errpath, NULL);
    CHECK(WIFEXITED(ws) && WEXITSTATUS(ws) == 0, "amdim-load exit %d: %s", ws, lerr ? lerr : "");
    CHECK(lerr && strstr(lerr, "dropped a connection") && strstr(lerr, "did not send START") &&
              strstr(lerr, "disconnected before START"),
          "the dropped connections are not reported: %s", lerr ? lerr : "");
    /* The flood: a few lines, then counts that add up to every connection. */
    int lines = 0;
    unsigned long long summarised = 0;
    for (const char *q = lerr; q && (q = strstr(q, "a connection from")); q++)
        lines++;
    for (const char *q = lerr; q && (q = strstr(q, "refused or dropped ")); q++)
        summarised += strtoull(q + strlen("refused or dropped "), NULL, 10);
    int total = foreign + 2 + FLOOD;
    printf("test_fault_loader: %d connections that were not the consumer: %d lines, %llu counted in summaries, log %zu "
           "bytes\n",
           total, lines, summarised, lerr ? strlen(lerr) : 0);
    CHECK(lines <= 5 && lines + (int)summarised == total,
          "%d intruders logged as %d lines and %llu in summaries", total, lines, summarised);
    if (foreign)
        CHECK(lerr && strstr(lerr, "refused a connection from uid 65534"), "the foreign user is not reported: %s", lerr ? lerr : "");
    else
        printf("test_fault_loader: another user's connection not tried (not root)\n");
    free(lerr);
    close(out[0]);
    close(cp[0]);
    return test_finish("test_fault_loader");
}
