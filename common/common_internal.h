/* amdim common: the parsing behind amdim_mem_available(), taking file
 * contents as strings so that tests can feed crafted /proc and cgroup
 * files. Not part of the public interface. */
#ifndef AMDIM_COMMON_INTERNAL_H
#define AMDIM_COMMON_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

/* Reads MemAvailable (kB) from the text of /proc/meminfo into *bytes.
 * Returns 0, or AMDIM_E_CORRUPT when the line is missing or malformed. */
int amdim_mem_parse_meminfo(const char *text, uint64_t *bytes);

/* Finds the process's memory cgroup in the text of /proc/self/cgroup: a v1
 * line whose controller list has "memory" (version 1) or else the v2 line
 * "0::PATH" (version 2). Copies PATH into path. Returns 0, or
 * AMDIM_E_NOT_FOUND when there is neither. */
int amdim_mem_parse_cgroup(const char *text, int *version, char *path, size_t pathn);

/* Parses a cgroup memory value ("max", or a byte count). Sets *unlimited
 * for "max" and for v1's "no limit" values (2^60 bytes and more). Returns
 * 0, or AMDIM_E_CORRUPT when the text is neither. */
int amdim_mem_parse_value(const char *text, uint64_t *bytes, int *unlimited);

/* Reads the file at path into buf (NUL-terminated); 0 or negative status. */
typedef int (*amdim_mem_reader)(void *ctx, const char *path, char *buf, size_t n);

/* amdim_mem_available() with the files read through `read`: /proc/meminfo,
 * /proc/self/cgroup and the cgroup files under `cgroot` (normally
 * "/sys/fs/cgroup"; v1 adds "/memory"). */
int amdim_mem_available_with(amdim_mem_reader read, void *ctx, const char *cgroot, uint64_t *bytes, char *why,
                             size_t whyn);

#endif
