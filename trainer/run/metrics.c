/* metrics.jsonl: the training lines, the algorithm table, and trimming a
 * resumed run's file (metrics_internal.h). */
#include "metrics_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "amdim_common.h"

void amdim_metrics_interval_add(amdim_metrics_interval *iv, const amdim_step_stats *s, uint32_t pairs, int ranks)
{
    iv->nce_1t5 += s->nce_1t5, iv->nce_1t7 += s->nce_1t7, iv->nce_5t5 += s->nce_5t5, iv->reg += s->reg;
    iv->cls_mlp += s->cls_mlp, iv->cls_lin += s->cls_lin, iv->total += s->total, iv->mix_entropy += s->mix_entropy;
    iv->correct_mlp += (uint64_t)s->correct_mlp, iv->correct_lin += (uint64_t)s->correct_lin;
    iv->labelled += (uint64_t)s->labelled, iv->pairs += (uint64_t)pairs * (uint64_t)ranks, iv->steps++;
}

/* Logs an interval to stderr and a line to metrics (NULL on ranks other
 * than 0, which log nothing). 0 or AMDIM_E_IO naming metrics.jsonl. */
int amdim_metrics_log_interval(amdim_output *metrics, amdim_metrics_interval *iv, amdim_model *m, uint64_t epoch,
                               double wait_now, int probes_only, char *err, size_t n)
{
    int quiet = metrics == NULL;
    double now = amdim_now(), dt = now - iv->t0;
    if (quiet) { /* ranks other than 0: rank 0 logs the group's figures */
        memset(iv, 0, sizeof *iv);
        iv->t0 = now;
        iv->wait0 = wait_now;
        return AMDIM_OK;
    }
    double k = iv->steps ? 1.0 / iv->steps : 0;
    double acc_m = iv->labelled ? (double)iv->correct_mlp / iv->labelled : NAN;
    double acc_l = iv->labelled ? (double)iv->correct_lin / iv->labelled : NAN;
    double wait = dt > 0 ? (wait_now - iv->wait0) / dt : 0;
    float lr = amdim_model_learning_rate(m, (int)epoch);
    uint64_t step = amdim_model_updates(m);
    if (probes_only)
        fprintf(stderr,
                "amdim-train: step %llu epoch %llu: probes mlp %.4f lin %.4f, train acc %.3f/%.3f, lr %.3g, %.1f "
                "pairs/s, data wait %.0f%%\n",
                (unsigned long long)step, (unsigned long long)epoch, iv->cls_mlp * k, iv->cls_lin * k, acc_m, acc_l, lr,
                dt > 0 ? iv->pairs / dt : 0, 100 * wait);
    else if (amdim_model_get_config(m)->mixtures > 1)
        fprintf(stderr,
                "amdim-train: step %llu epoch %llu: loss %.4f (1t5 %.4f 1t7 %.4f 5t5 %.4f reg %.4f mixture entropy "
                "%.4f) probes %.4f/%.4f acc %.3f/%.3f, lr %.3g, %.1f pairs/s, data wait %.0f%%\n",
                (unsigned long long)step, (unsigned long long)epoch, iv->total * k, iv->nce_1t5 * k, iv->nce_1t7 * k,
                iv->nce_5t5 * k, iv->reg * k, iv->mix_entropy * k, iv->cls_mlp * k, iv->cls_lin * k, acc_m, acc_l, lr,
                dt > 0 ? iv->pairs / dt : 0, 100 * wait);
    else
        fprintf(stderr,
                "amdim-train: step %llu epoch %llu: loss %.4f (1t5 %.4f 1t7 %.4f 5t5 %.4f reg %.4f) probes %.4f/%.4f "
                "acc %.3f/%.3f, lr %.3g, %.1f pairs/s, data wait %.0f%%\n",
                (unsigned long long)step, (unsigned long long)epoch, iv->total * k, iv->nce_1t5 * k, iv->nce_1t7 * k,
                iv->nce_5t5 * k, iv->reg * k, iv->cls_mlp * k, iv->cls_lin * k, acc_m, acc_l, lr,
                dt > 0 ? iv->pairs / dt : 0, 100 * wait);
    /* %.17g: losses round-trip exactly, so runs can be compared bit for bit */
    char line[1024];
    int len =
        snprintf(line, sizeof line,
                 "{\"kind\":\"train\",\"step\":%llu,\"epoch\":%llu,\"loss\":%.17g,\"nce_1t5\":%.17g,\"nce_1t7\":%.17g,"
                 "\"nce_5t5\":%.17g,\"reg\":%.17g,\"cls_mlp\":%.17g,\"cls_lin\":%.17g,\"train_acc_mlp\":%.6g,"
                 "\"train_acc_lin\":%.6g,\"lr\":%.9g,\"pairs_per_s\":%.3f,\"data_wait\":%.4f,\"steps\":%llu",
                 (unsigned long long)step, (unsigned long long)epoch, iv->total * k, iv->nce_1t5 * k, iv->nce_1t7 * k,
                 iv->nce_5t5 * k, iv->reg * k, iv->cls_mlp * k, iv->cls_lin * k, isnan(acc_m) ? -1.0 : acc_m,
                 isnan(acc_l) ? -1.0 : acc_l, lr, dt > 0 ? iv->pairs / dt : 0, wait, (unsigned long long)iv->steps);
    if (amdim_model_get_config(m)->mixtures > 1 && !probes_only)
        len += snprintf(line + len, sizeof line - (size_t)len, ",\"mix_entropy\":%.17g", iv->mix_entropy * k);
    len += snprintf(line + len, sizeof line - (size_t)len, "}\n");
    memset(iv, 0, sizeof *iv);
    iv->t0 = now;
    iv->wait0 = wait_now;
    AMDIM_ASSERT(len < (int)sizeof line);
    return amdim_output_write(metrics, line, (size_t)len, err, n);
}

/* Resuming from the checkpoint of `step`: metrics.jsonl keeps its complete
 * lines up to that step. Lines after it were logged by a run killed before
 * its next checkpoint (the resumed run logs those steps again), and a line
 * cut mid-way would have the next line glued on. A metrics file that is
 * not a regular file (a device, a FIFO) is left alone. */
int amdim_metrics_trim(const char *path, uint64_t step, char *err, size_t n)
{
    int fd = open(path, O_RDWR | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0)
        return errno == ENOENT ? AMDIM_OK : amdim_fail(err, n, AMDIM_E_IO, "cannot open %s: %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode) || sb.st_size == 0) {
        close(fd);
        return AMDIM_OK;
    }
    size_t size = (size_t)sb.st_size, keep = 0, dropped = 0;
    char *text = malloc(size + 1);
    ssize_t got = text ? pread(fd, text, size, 0) : -1;
    if (got != (ssize_t)size) {
        int e = errno;
        free(text);
        close(fd);
        return amdim_fail(err, n, AMDIM_E_IO, "cannot read %s: %s", path, got < 0 ? strerror(e) : "short read");
    }
    text[size] = 0;
    for (size_t at = 0; at < size;) {
        char *nl = memchr(text + at, '\n', size - at);
        if (!nl)
            break; /* cut mid-line */
        *nl = 0;
        const char *sp = strstr(text + at, "\"step\":");
        if (sp && strtoull(sp + 7, NULL, 10) > step)
            break;
        at = keep = (size_t)(nl - text) + 1;
    }
    for (size_t i = keep; i < size; i++)
        dropped += text[i] == '\n' || text[i] == 0 || i + 1 == size;
    free(text);
    int st = AMDIM_OK;
    if (keep < size) {
        if (ftruncate(fd, (off_t)keep) != 0)
            st = amdim_fail(err, n, AMDIM_E_IO, "cannot truncate %s: %s", path, strerror(errno));
        else
            fprintf(stderr,
                    "amdim-train: %s: dropped %zu line%s after step %llu (logged after that checkpoint, or cut "
                    "mid-line); the resumed run logs those steps again\n",
                    path, dropped, dropped == 1 ? "" : "s", (unsigned long long)step);
    }
    close(fd);
    return st;
}

/* After the first step: the backend's algorithm choices (cuDNN's on CUDA)
 * to stderr and, as one JSON string, to metrics.jsonl: a run records how
 * it convolved, so a rerun on the same GPU model can be compared bit for
 * bit. Nothing on the CPU. */
int amdim_metrics_log_algorithms(amdim_output *metrics, const amdim_model *m, char *err, size_t n)
{
    size_t len = amdim_model_algorithms(m, NULL, 0);
    if (!len || !metrics)
        return AMDIM_OK;
    char *text = malloc(len + 1), *line = malloc(2 * len + 128);
    if (!text || !line) {
        free(text), free(line);
        return amdim_fail(err, n, AMDIM_E_NOMEM, "out of memory");
    }
    amdim_model_algorithms(m, text, len + 1);
    fprintf(stderr, "amdim-train: cuDNN algorithms:\n%s", text);
    size_t k = (size_t)sprintf(line, "{\"kind\":\"algorithms\",\"step\":%llu,\"cudnn\":\"",
                               (unsigned long long)amdim_model_updates(m));
    for (size_t i = 0; i < len; i++) { /* the table's text holds no quote or backslash */
        if (text[i] == '\n')
            line[k++] = '\\', line[k++] = 'n';
        else if ((unsigned char)text[i] >= 32 && text[i] != '"' && text[i] != '\\')
            line[k++] = text[i];
    }
    k += (size_t)sprintf(line + k, "\"}\n");
    int st = amdim_output_write(metrics, line, k, err, n);
    free(text), free(line);
    return st;
}
