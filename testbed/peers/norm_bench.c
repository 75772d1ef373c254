/* norm_bench: NORM (RFC 5740, libnorm 1.5.9) stream sender/receiver for the peers benchmark.
 *
 *   norm_bench send --iface NAME --size B --count N [--group G] [--port P] [--rate-mbit R]
 *                   [--grtt S] [--buffer-kb K] [--acks K] [--node ID] [--linger S]
 *   norm_bench recv --iface NAME --size B --count N [--group G] [--port P] [--node ID]
 *                   [--timeout S] [--idle S]
 *
 * One NORM stream object (--buffer-kb, default 4 MB: the repair window, and the queue a message
 * waits in before it is paced out); every message is written whole and followed by NormStreamMarkEom.
 * Interface set by NAME (eth0 inside a testbed namespace), TTL 1, initial GRTT estimate 1 ms
 * (the 0.5 s default delays the first repairs), fixed rate (default 400 Mbit/s, below what the
 * receivers can take here; no congestion control), 1400-byte segments (one frame each),
 * FEC blocks of 64 + 8 parity (parity sent only on NACK), 8 MB socket buffers, receivers with
 * the NORM_SYNC_STREAM policy (deliver the stream from its start). The sender stays alive after
 * its last message (flushes actively; repairs) until SIGTERM or --linger seconds.
 * --acks K: ACK-based flow control (as NORM's normStreamer does): receivers with node ids 2..K+1
 * are acking nodes; every quarter of the stream buffer the sender sets a watermark and does not
 * write more than half a buffer past a watermark the receivers have not all acknowledged, so a
 * slow receiver slows the sender instead of losing stream data (a "stream break").
 * Compiled as C++ (g++ -x c++): the shipped normApi.h uses C++ references and a default argument. */
#include "bench_common.h"
#include <errno.h>
#include <poll.h>
#include <unistd.h>
#include <normApi.h>

static NormInstanceHandle inst;

/* Wait up to ms for the next NORM event; returns 1 and fills ev when there is one. */
static int next_event(NormEvent *ev, int ms)
{
    struct pollfd p;
    p.fd = NormGetDescriptor(inst);
    p.events = POLLIN;
    p.revents = 0;
    if (poll(&p, 1, ms) <= 0) return 0;
    return NormGetNextEvent(inst, ev, false) ? 1 : 0;
}

/* Sender: wait up to ms for an event; a completed watermark clears tx_pending. */
static NormSessionHandle tx_ses;
static int tx_pending;
static uint64_t tx_mark_fail;
static void tx_wait(int ms)
{
    NormEvent ev;
    if (next_event(&ev, ms) && ev.type == NORM_TX_WATERMARK_COMPLETED) {
        tx_pending = 0;
        if (NormGetAckingStatus(tx_ses, NORM_NODE_ANY) != NORM_ACK_SUCCESS) tx_mark_fail++;
    }
}

int main(int argc, char **argv)
{
    const char *iface = "eth0", *group = "239.255.90.2";
    int port = 6003, node = 0, bufkb = 4096, acks = 0;
    long size = 1024, count = 100000;
    double rate = 400, grtt = 0.001, timeout = 20, idle = 3, linger = 20;
    if (argc < 2) { fprintf(stderr, "usage: norm_bench send|recv --iface NAME ... (see source)\n"); return 2; }
    int sender = strcmp(argv[1], "send") == 0;
    for (int i = 2; i + 1 < argc; i += 2) {
        const char *k = argv[i], *v = argv[i + 1];
        if (!strcmp(k, "--iface")) iface = v;
        else if (!strcmp(k, "--group")) group = v;
        else if (!strcmp(k, "--port")) port = atoi(v);
        else if (!strcmp(k, "--node")) node = atoi(v);
        else if (!strcmp(k, "--size")) size = atol(v);
        else if (!strcmp(k, "--count")) count = atol(v);
        else if (!strcmp(k, "--rate-mbit")) rate = atof(v);
        else if (!strcmp(k, "--grtt")) grtt = atof(v);
        else if (!strcmp(k, "--buffer-kb")) bufkb = atoi(v);
        else if (!strcmp(k, "--acks")) acks = atoi(v);
        else if (!strcmp(k, "--timeout")) timeout = atof(v);
        else if (!strcmp(k, "--idle")) idle = atof(v);
        else if (!strcmp(k, "--linger")) linger = atof(v);
        else { fprintf(stderr, "norm_bench: unknown option %s\n", k); return 2; }
    }
    if (size < BENCH_HDR || count < 1) { fprintf(stderr, "norm_bench: need --size >= 16, --count >= 1\n"); return 2; }
    if (!node) node = sender ? 1 : 2 + (int)(getpid() % 60000);
    bench_signals();

    inst = NormCreateInstance(false);
    NormSessionHandle ses = NormCreateSession(inst, group, (UINT16)port, (NormNodeId)node);
    if (ses == NORM_SESSION_INVALID) { fprintf(stderr, "norm_bench: NormCreateSession failed\n"); return 1; }
    if (!NormSetMulticastInterface(ses, iface)) { fprintf(stderr, "norm_bench: bad interface %s\n", iface); return 1; }
    NormSetTTL(ses, 1);
    NormSetGrttEstimate(ses, grtt);
    NormSetTxRate(ses, rate * 1e6);
    NormSetTxSocketBuffer(ses, 8 << 20);
    NormSetRxSocketBuffer(ses, 8 << 20);
    char extra[256];
    snprintf(extra, sizeof extra, sender ? "\"iface\":\"%s\",\"group\":\"%s:%d\",\"rate_mbit\":%.0f,\"grtt_s\":%g" : "\"iface\":\"%s\",\"group\":\"%s:%d\"",
             iface, group, port, rate, grtt);
    unsigned char *buf = (unsigned char *)calloc(1, (size_t)size);
    NormEvent ev;

    if (sender) {
        if (!NormStartSender(ses, NormGetRandomSessionId(), 64u << 20, 1400, 64, 8, 0)) {
            fprintf(stderr, "norm_bench: NormStartSender failed\n"); return 1;
        }
        NormObjectHandle st = NormStreamOpen(ses, (UINT32)bufkb << 10, NULL, 0);
        for (int a = 0; a < acks; a++) NormAddAckingNode(ses, (NormNodeId)(2 + a));
        uint64_t t0 = now_ns(), sent = 0, written = 0, mark = 0, quarter = ((uint64_t)bufkb << 10) / 4;
        uint64_t marks = 0;
        tx_ses = ses;
        for (long i = 0; i < count && !bench_stop; i++) {
            stamp(buf, (uint64_t)i);
            unsigned int off = 0;
            while (off < size && !bench_stop) {
                off += NormStreamWrite(st, (const char *)buf + off, (unsigned int)(size - off));
                if (off < size) tx_wait(100); /* wait for NORM_TX_QUEUE_VACANCY */
            }
            NormStreamMarkEom(st);
            sent++;
            written += (uint64_t)size;
            if (!acks) continue;
            if (!tx_pending && written - mark >= quarter) {
                NormSetWatermark(ses, st, true);
                tx_pending = 1;
                mark = written;
                marks++;
            }
            while (tx_pending && written - mark >= 2 * quarter && !bench_stop) tx_wait(100);
        }
        NormStreamFlush(st, true, NORM_FLUSH_ACTIVE);
        uint64_t t1 = now_ns();
        size_t l = strlen(extra);
        snprintf(extra + l, sizeof extra - l, ",\"acking_nodes\":%d,\"watermarks\":%llu,\"watermarks_failed\":%llu",
                 acks, (unsigned long long)marks, (unsigned long long)tx_mark_fail);
        send_print("norm", sent, t0, t1, (size_t)size, extra);
        for (uint64_t end = now_ns() + (uint64_t)(linger * 1e9); !bench_stop && now_ns() < end;)
            tx_wait(100); /* keep serving repairs, drain events */
        NormStopSender(ses);
    } else {
        NormSetDefaultSyncPolicy(ses, NORM_SYNC_STREAM);
        if (!NormStartReceiver(ses, 64u << 20)) { fprintf(stderr, "norm_bench: NormStartReceiver failed\n"); return 1; }
        struct rstats r;
        rstats_init(&r, (uint64_t)count);
        uint64_t start = now_ns(), breaks = 0;
        unsigned int have = 0;
        int resync = 0;
        const char *status = "signal";
        for (;;) {
            if (next_event(&ev, 100) && ev.type == NORM_RX_OBJECT_UPDATED &&
                NormObjectGetType(ev.object) == NORM_OBJECT_STREAM) {
                int done = 0;
                for (;;) {
                    if (resync) { /* skip to the next end-of-message mark, maybe in later data */
                        if (!NormStreamSeekMsgStart(ev.object)) break;
                        resync = 0;
                    }
                    unsigned int n = (unsigned int)size - have;
                    if (!NormStreamRead(ev.object, (char *)buf + have, &n)) {
                        breaks++; /* data lost for good (a stream break) */
                        have = 0;
                        resync = 1;
                        continue;
                    }
                    if (n == 0) break;
                    have += n;
                    if (have == size) {
                        have = 0;
                        if (rstats_add(&r, buf, (size_t)size)) { done = 1; break; }
                    }
                }
                if (done) { status = "complete"; break; }
            }
            if (bench_stop) break;
            uint64_t now = now_ns();
            if (!r.received && now - start > (uint64_t)(timeout * 1e9)) { status = "timeout"; break; }
            if (r.received && now - r.last_ns > (uint64_t)(idle * 1e9)) { status = "idle"; break; }
        }
        size_t l = strlen(extra);
        snprintf(extra + l, sizeof extra - l, ",\"stream_breaks\":%llu", (unsigned long long)breaks);
        rstats_print(&r, "norm", status, extra);
        NormStopReceiver(ses);
    }
    NormDestroySession(ses);
    NormDestroyInstance(inst);
    return 0;
}
