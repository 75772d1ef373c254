/* bench_common.h: shared bits of the peer harnesses (zmq_bench.c, norm_bench.c).
 *
 * Every message starts with an 8-byte sequence number and an 8-byte CLOCK_MONOTONIC send time
 * (nanoseconds, host byte order). All namespaces share one kernel clock, so a receiver gets the
 * true one-way latency from it. Receivers print one JSON line at the end, senders one too; the
 * line is printed (and flushed) BEFORE the library is shut down, so a hang in shutdown cannot
 * lose the result. Valid C and C++ (norm_bench is compiled as C++: normApi.h is not C-clean).
 * SIGTERM/SIGINT only set `bench_stop`; loops poll it. */
#ifndef BENCH_COMMON_H
#define BENCH_COMMON_H
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define BENCH_HDR 16

static volatile sig_atomic_t bench_stop;
static void bench_on_signal(int s) { (void)s; bench_stop = 1; }
static void bench_signals(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = bench_on_signal; /* no SA_RESTART: blocking calls return EINTR */
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void stamp(unsigned char *buf, uint64_t seq)
{
    uint64_t t = now_ns();
    memcpy(buf, &seq, 8);
    memcpy(buf + 8, &t, 8);
}

/* Receiver statistics: sequence bookkeeping and one-way latencies (µs). */
struct rstats {
    uint64_t expected, received, dup, ooo, next_seq, first_ns, last_ns;
    uint8_t *seen;  /* one byte per sequence number */
    float *lat_us;  /* one per delivered message */
};

static void rstats_init(struct rstats *r, uint64_t expected)
{
    memset(r, 0, sizeof *r);
    r->expected = expected;
    r->seen = (uint8_t *)calloc(expected ? expected : 1, 1);
    r->lat_us = (float *)malloc(sizeof(float) * (expected ? expected : 1));
    if (!r->seen || !r->lat_us) { perror("malloc"); exit(1); }
}

/* Account one message of `len` bytes; returns 1 when all expected messages are in. */
static int rstats_add(struct rstats *r, const unsigned char *buf, size_t len)
{
    uint64_t seq, t, now = now_ns();
    if (len < BENCH_HDR) return 0;
    memcpy(&seq, buf, 8);
    memcpy(&t, buf + 8, 8);
    if (seq >= r->expected) return 0;
    if (r->seen[seq]) { r->dup++; return 0; }
    r->seen[seq] = 1;
    if (seq != r->next_seq) r->ooo++;
    r->next_seq = seq + 1;
    if (!r->received) r->first_ns = now;
    r->last_ns = now;
    r->lat_us[r->received++] = (float)((double)(now - t) / 1e3);
    return r->received == r->expected;
}

static int cmp_float(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

static double pct(const float *v, uint64_t n, double p)
{
    uint64_t i = (uint64_t)(p * (double)(n - 1) + 0.5);
    return n ? v[i] : 0;
}

/* The receiver's JSON line. status: complete | timeout | idle | signal. */
static void rstats_print(struct rstats *r, const char *peer, const char *status, const char *extra)
{
    double el = r->received > 1 ? (double)(r->last_ns - r->first_ns) / 1e9 : 0;
    qsort(r->lat_us, r->received, sizeof(float), cmp_float);
    printf("{\"peer\":\"%s\",\"role\":\"recv\",\"status\":\"%s\",\"received\":%llu,\"expected\":%llu,"
           "\"delivered\":%.4f,\"duplicates\":%llu,\"out_of_order\":%llu,\"elapsed_s\":%.3f,"
           "\"rate_msgs_s\":%.0f",
           peer, status, (unsigned long long)r->received, (unsigned long long)r->expected,
           r->expected ? (double)r->received / (double)r->expected : 0,
           (unsigned long long)r->dup, (unsigned long long)r->ooo, el,
           el > 0 ? (double)r->received / el : 0);
    if (r->received)
        printf(",\"latency_us\":{\"p50\":%.1f,\"p99\":%.1f,\"max\":%.1f}",
               pct(r->lat_us, r->received, 0.5), pct(r->lat_us, r->received, 0.99),
               r->lat_us[r->received - 1]);
    printf("%s%s}\n", extra && *extra ? "," : "", extra ? extra : "");
    fflush(stdout);
}

static void send_print(const char *peer, uint64_t sent, uint64_t t0, uint64_t t1, size_t size,
                       const char *extra)
{
    double el = (double)(t1 - t0) / 1e9;
    printf("{\"peer\":\"%s\",\"role\":\"send\",\"sent\":%llu,\"size\":%zu,\"elapsed_s\":%.3f,"
           "\"rate_msgs_s\":%.0f%s%s}\n",
           peer, (unsigned long long)sent, size, el, el > 0 ? (double)sent / el : 0,
           extra && *extra ? "," : "", extra ? extra : "");
    fflush(stdout);
}
#endif
