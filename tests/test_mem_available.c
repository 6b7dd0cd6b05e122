/* amdim_mem_available(): MemAvailable and cgroup v1/v2 limits, parsed from
 * crafted file contents, and one call on this machine. */
#include "amdim_common.h"
#include "common_internal.h"
#include "testutil.h"

#include <stdlib.h>
#include <string.h>

#define GiB (1ull << 30)

typedef struct {
    const char *path, *text;
} fake_file;

static int fake_read(void *ctx, const char *path, char *buf, size_t n)
{
    for (const fake_file *f = ctx; f->path; f++)
        if (strcmp(f->path, path) == 0) {
            snprintf(buf, n, "%s", f->text);
            return 0;
        }
    return AMDIM_E_IO;
}

static const char meminfo_21g[] = "MemTotal:       32000000 kB\nMemFree:         1000000 kB\n"
                                  "MemAvailable:   22334668 kB\nBuffers:          100 kB\n";

static void test_parsers(void)
{
    uint64_t b = 0;
    int v = 0, unl = 0;
    char path[64];
    CHECK(amdim_mem_parse_meminfo(meminfo_21g, &b) == 0 && b == 22334668ull * 1024, "%llu", (unsigned long long)b);
    CHECK(amdim_mem_parse_meminfo("MemTotal: 5 kB\n", &b) == AMDIM_E_CORRUPT, "missing line");
    CHECK(amdim_mem_parse_meminfo("MemAvailable: lots\n", &b) == AMDIM_E_CORRUPT, "malformed");
    CHECK(amdim_mem_parse_meminfo("", &b) == AMDIM_E_CORRUPT, "empty");

    const char hybrid[] = "9:name=systemd:/\n8:pids:/\n4:memory:/process_api/abc\n1:cpu,cpuacct:/\n0::/\n";
    CHECK(amdim_mem_parse_cgroup(hybrid, &v, path, sizeof path) == 0 && v == 1 && strcmp(path, "/process_api/abc") == 0,
          "v=%d path=%s", v, path);
    CHECK(amdim_mem_parse_cgroup("3:cpu,memory,blkio:/job\n", &v, path, sizeof path) == 0 && v == 1 &&
              strcmp(path, "/job") == 0,
          "v=%d path=%s", v, path);
    CHECK(amdim_mem_parse_cgroup("0::/user.slice/session-2.scope\n", &v, path, sizeof path) == 0 && v == 2 &&
              strcmp(path, "/user.slice/session-2.scope") == 0,
          "v=%d path=%s", v, path);
    CHECK(amdim_mem_parse_cgroup("0::/", &v, path, sizeof path) == 0 && v == 2 && strcmp(path, "/") == 0, "root");
    CHECK(amdim_mem_parse_cgroup("5:memoryx:/a\n", &v, path, sizeof path) == AMDIM_E_NOT_FOUND, "no memory controller");
    CHECK(amdim_mem_parse_cgroup("", &v, path, sizeof path) == AMDIM_E_NOT_FOUND, "empty");

    CHECK(amdim_mem_parse_value("max\n", &b, &unl) == 0 && unl, "max");
    CHECK(amdim_mem_parse_value("4294967296\n", &b, &unl) == 0 && !unl && b == 4 * GiB, "number");
    CHECK(amdim_mem_parse_value("9223372036854771712\n", &b, &unl) == 0 && unl, "v1 no limit");
    CHECK(amdim_mem_parse_value("12x\n", &b, &unl) == AMDIM_E_CORRUPT, "junk");
    CHECK(amdim_mem_parse_value("-1\n", &b, &unl) == AMDIM_E_CORRUPT, "negative");
    CHECK(amdim_mem_parse_value("", &b, &unl) == AMDIM_E_CORRUPT, "empty");
}

/* One configuration: files, the expected figure and words of `why`. */
typedef struct {
    const char *name;
    fake_file files[8];
    int status;
    uint64_t bytes;
    const char *why;
} config;

static const config configs[] = {
    {"v2 leaf limit binds",
     {{"/proc/meminfo", meminfo_21g},
      {"/proc/self/cgroup", "0::/app\n"},
      {"/cg/app/memory.max", "4294967296\n"},
      {"/cg/app/memory.current", "1288490188\n"},
      {0, 0}},
     0, 4 * GiB - 1288490188ull, "cgroup memory.max 4.0 GiB, 1.2 GiB in use (/cg/app)"},
    {"v2 unlimited: MemAvailable",
     {{"/proc/meminfo", meminfo_21g},
      {"/proc/self/cgroup", "0::/app\n"},
      {"/cg/app/memory.max", "max\n"},
      {"/cg/app/memory.current", "1288490188\n"},
      {0, 0}},
     0, 22334668ull * 1024, "MemAvailable 21.3 GiB"},
    {"v2 ancestor tighter than leaf",
     {{"/proc/meminfo", meminfo_21g},
      {"/proc/self/cgroup", "0::/a/b\n"},
      {"/cg/a/b/memory.max", "8589934592\n"},
      {"/cg/a/b/memory.current", "1073741824\n"},
      {"/cg/a/memory.max", "3221225472\n"},
      {"/cg/a/memory.current", "2147483648\n"},
      {0, 0}},
     0, GiB, "cgroup memory.max 3.0 GiB, 2.0 GiB in use (/cg/a)"},
    {"limit larger than memory: MemAvailable",
     {{"/proc/meminfo", meminfo_21g},
      {"/proc/self/cgroup", "0::/a\n"},
      {"/cg/a/memory.max", "107374182400\n"},
      {"/cg/a/memory.current", "0\n"},
      {0, 0}},
     0, 22334668ull * 1024, "MemAvailable"},
    {"v1 leaf missing in a container: the mount's root",
     {{"/proc/meminfo", meminfo_21g},
      {"/proc/self/cgroup", "9:name=systemd:/\n4:memory:/docker/abc\n0::/\n"},
      {"/cg/memory/memory.limit_in_bytes", "2147483648\n"},
      {"/cg/memory/memory.usage_in_bytes", "536870912\n"},
      {0, 0}},
     0, GiB + GiB / 2, "cgroup memory.limit_in_bytes 2.0 GiB, 512.0 MiB in use (/cg/memory)"},
    {"v1 no limit",
     {{"/proc/meminfo", meminfo_21g},
      {"/proc/self/cgroup", "4:memory:/x\n"},
      {"/cg/memory/x/memory.limit_in_bytes", "9223372036854771712\n"},
      {"/cg/memory/x/memory.usage_in_bytes", "536870912\n"},
      {0, 0}},
     0, 22334668ull * 1024, "MemAvailable 21.3 GiB"},
    {"usage over limit: nothing left",
     {{"/proc/meminfo", meminfo_21g},
      {"/proc/self/cgroup", "0::/\n"},
      {"/cg/memory.max", "1073741824\n"},
      {"/cg/memory.current", "2147483648\n"},
      {0, 0}},
     0, 0, "memory.max 1.0 GiB, 2.0 GiB in use"},
    {"no meminfo, cgroup limit",
     {{"/proc/self/cgroup", "0::/\n"}, {"/cg/memory.max", "1073741824\n"}, {"/cg/memory.current", "0\n"}, {0, 0}},
     0, GiB, "cgroup memory.max 1.0 GiB"},
    {"nothing readable", {{0, 0}}, AMDIM_E_IO, 0, "/proc/meminfo cannot be read and no cgroup memory limit applies"},
    {"meminfo without MemAvailable",
     {{"/proc/meminfo", "MemTotal: 100 kB\n"}, {"/proc/self/cgroup", "0::/\n"}, {0, 0}},
     AMDIM_E_CORRUPT, 0, "no valid MemAvailable line"},
};

int main(void)
{
    test_parsers();
    for (size_t i = 0; i < sizeof configs / sizeof configs[0]; i++) {
        const config *c = &configs[i];
        uint64_t b = 12345;
        char why[256] = "";
        int st = amdim_mem_available_with(fake_read, (void *)c->files, "/cg", &b, why, sizeof why);
        CHECK(st == c->status, "%s: status %d, want %d (%s)", c->name, st, c->status, why);
        if (st == 0)
            CHECK(b == c->bytes, "%s: %llu bytes, want %llu", c->name, (unsigned long long)b,
                  (unsigned long long)c->bytes);
        CHECK(strstr(why, c->why) != NULL, "%s: why '%s' lacks '%s'", c->name, why, c->why);
    }

    uint64_t b = 0;
    char why[256] = "";
    int st = amdim_mem_available(&b, why, sizeof why);
    CHECK(st == 0 && b > 0, "this machine: status %d, %s", st, why);
    printf("this machine: %llu bytes available: %s\n", (unsigned long long)b, why);
    return test_finish("test_mem_available");
}
