/* zmq_bench: ZeroMQ PUB/SUB over epgm:// (OpenPGM, reliable multicast) for the peers benchmark.
 *
 *   zmq_bench pub --iface ADDR [--group G] [--port P] --size B --count N [--rate-kbit R]
 *                 [--recovery-ms MS] [--hwm N] [--linger S] [--topics T]
 *   zmq_bench sub --iface ADDR [--group G] [--port P] --count N [--timeout S] [--idle S]
 *                 [--topics T]
 *
 * Endpoint epgm://ADDR;GROUP:PORT. Settings: ZMQ_RATE (kbit/s; default 100 in libzmq, far too
 * low), ZMQ_RECOVERY_IVL (how long the sender keeps data for repairs), ZMQ_MULTICAST_HOPS 1
 * (TTL 1), receive HWM 0 (unlimited), send HWM 1000 (--hwm) with ZMQ_XPUB_NODROP so a full
 * queue blocks the publisher instead of dropping silently, 8 MB socket buffers.
 * The publisher stays alive after its last message (repairs are served from its window) until
 * SIGTERM or --linger seconds. Sockets are closed before the context is terminated (else
 * zmq_ctx_term hangs). See bench_common.h for the payload and the JSON lines.
 *
 * --topics T (1..100000; default 0 = no topics, subscribe to everything with ""): every message
 * starts with a fixed-width topic string "t%05d" (TOPIC_LEN = 6 bytes, no terminator; fixed
 * width so that no topic is a prefix of another), followed by the usual 16-byte seq + time
 * stamp. The publisher sends message i on topic i % T (round robin); a subscriber subscribes
 * to all T topic strings (ZMQ_SUBSCRIBE each) and checks that message i came on topic i % T
 * ("topic_errors"). --size is the whole message, topic prefix included (>= 22 with topics).
 * Over epgm:// libzmq filters at the subscriber (the publisher subscribes its PGM pipe to
 * everything), so every receiver gets every packet and T costs subscriber-side matching. */
#include "bench_common.h"
#include <errno.h>
#include <unistd.h>
#include <zmq.h>

#define TOPIC_LEN 6 /* "t%05d" */
#define TOPIC_MAX 100000

static void topic_str(char *dst, long t)
{
    char tmp[16];
    snprintf(tmp, sizeof tmp, "t%05ld", t);
    memcpy(dst, tmp, TOPIC_LEN);
}

static void die(const char *what) { fprintf(stderr, "zmq_bench: %s: %s\n", what, zmq_strerror(zmq_errno())); exit(1); }
static void setint(void *s, int opt, int v, const char *name)
{
    if (zmq_setsockopt(s, opt, &v, sizeof v) != 0) die(name);
}

int main(int argc, char **argv)
{
    const char *iface = NULL, *group = "239.255.90.1";
    int port = 5555, rate = 1000000, recovery = 10000, hops = 1, hwm = 1000;
    long size = 1024, count = 100000, topics = 0;
    double timeout = 20, idle = 3, linger = 20;
    if (argc < 2) { fprintf(stderr, "usage: zmq_bench pub|sub --iface ADDR ... (see source)\n"); return 2; }
    int pub = strcmp(argv[1], "pub") == 0;
    for (int i = 2; i + 1 < argc; i += 2) {
        const char *k = argv[i], *v = argv[i + 1];
        if (!strcmp(k, "--iface")) iface = v;
        else if (!strcmp(k, "--group")) group = v;
        else if (!strcmp(k, "--port")) port = atoi(v);
        else if (!strcmp(k, "--size")) size = atol(v);
        else if (!strcmp(k, "--count")) count = atol(v);
        else if (!strcmp(k, "--rate-kbit")) rate = atoi(v);
        else if (!strcmp(k, "--recovery-ms")) recovery = atoi(v);
        else if (!strcmp(k, "--hwm")) hwm = atoi(v);
        else if (!strcmp(k, "--timeout")) timeout = atof(v);
        else if (!strcmp(k, "--idle")) idle = atof(v);
        else if (!strcmp(k, "--linger")) linger = atof(v);
        else if (!strcmp(k, "--topics")) topics = atol(v);
        else { fprintf(stderr, "zmq_bench: unknown option %s\n", k); return 2; }
    }
    if (!iface || size < BENCH_HDR || count < 1) { fprintf(stderr, "zmq_bench: need --iface, --size >= 16, --count >= 1\n"); return 2; }
    if (topics < 0 || topics > TOPIC_MAX || (topics && size < TOPIC_LEN + BENCH_HDR)) {
        fprintf(stderr, "zmq_bench: --topics 0..%d (0 = none), with topics --size >= %d\n", TOPIC_MAX, TOPIC_LEN + BENCH_HDR);
        return 2;
    }
    const size_t plen = topics ? TOPIC_LEN : 0; /* the stamp follows the topic prefix */
    bench_signals();

    char ep[200], extra[500];
    snprintf(ep, sizeof ep, "epgm://%s;%s:%d", iface, group, port);
    void *ctx = zmq_ctx_new();
    void *s = zmq_socket(ctx, pub ? ZMQ_PUB : ZMQ_SUB);
    if (!s) die("zmq_socket");
    setint(s, ZMQ_RATE, rate, "ZMQ_RATE");
    setint(s, ZMQ_RECOVERY_IVL, recovery, "ZMQ_RECOVERY_IVL");
    setint(s, ZMQ_MULTICAST_HOPS, hops, "ZMQ_MULTICAST_HOPS");
    setint(s, ZMQ_SNDHWM, hwm, "ZMQ_SNDHWM");
    setint(s, ZMQ_RCVHWM, 0, "ZMQ_RCVHWM");
    setint(s, ZMQ_SNDBUF, 8 << 20, "ZMQ_SNDBUF");
    setint(s, ZMQ_RCVBUF, 8 << 20, "ZMQ_RCVBUF");
    setint(s, ZMQ_LINGER, 0, "ZMQ_LINGER");
    int xl = snprintf(extra, sizeof extra, "\"endpoint\":\"%s\",\"rate_kbit\":%d,\"recovery_ms\":%d", ep, rate, recovery);
    if (topics) snprintf(extra + xl, sizeof extra - (size_t)xl, ",\"topics\":%ld", topics);

    if (pub) {
        setint(s, ZMQ_XPUB_NODROP, 1, "ZMQ_XPUB_NODROP"); /* full queue: block, do not drop */
        if (zmq_connect(s, ep) != 0) die(ep);
        unsigned char *buf = calloc(1, (size_t)size);
        uint64_t t0 = now_ns(), sent = 0;
        for (long i = 0; i < count && !bench_stop; i++) {
            if (topics) topic_str((char *)buf, i % topics); /* round robin over the topics */
            stamp(buf + plen, (uint64_t)i);
            if (zmq_send(s, buf, (size_t)size, 0) < 0) {
                if (errno == EINTR) break;
                die("zmq_send");
            }
            sent++;
        }
        uint64_t t1 = now_ns();
        /* Sent = queued to the PGM engine, which paces at ZMQ_RATE: stay for repairs. */
        send_print("zmq-epgm", sent, t0, t1, (size_t)size, extra);
        for (uint64_t end = now_ns() + (uint64_t)(linger * 1e9); !bench_stop && now_ns() < end;)
            usleep(50000);
    } else {
        if (!topics) {
            if (zmq_setsockopt(s, ZMQ_SUBSCRIBE, "", 0) != 0) die("ZMQ_SUBSCRIBE");
        } else {
            char t[TOPIC_LEN];
            for (long k = 0; k < topics; k++) {
                topic_str(t, k);
                if (zmq_setsockopt(s, ZMQ_SUBSCRIBE, t, TOPIC_LEN) != 0) die("ZMQ_SUBSCRIBE");
            }
        }
        setint(s, ZMQ_RCVTIMEO, 100, "ZMQ_RCVTIMEO");
        if (zmq_connect(s, ep) != 0) die(ep);
        struct rstats r;
        rstats_init(&r, (uint64_t)count);
        unsigned char *buf = malloc((size_t)size + 64);
        uint64_t start = now_ns();
        const char *status = "signal";
        uint64_t topic_errors = 0;
        for (;;) {
            int n = zmq_recv(s, buf, (size_t)size + 64, 0);
            if (n >= (int)(plen + BENCH_HDR) && topics) {
                /* the topic must be seq % topics */
                uint64_t seq;
                char want[TOPIC_LEN];
                memcpy(&seq, buf + plen, 8);
                topic_str(want, (long)(seq % (uint64_t)topics));
                if (memcmp(buf, want, TOPIC_LEN) != 0) topic_errors++;
            }
            if (n >= (int)plen && rstats_add(&r, buf + plen, (size_t)n - plen)) { status = "complete"; break; }
            if (n < 0 && errno != EAGAIN && errno != EINTR) die("zmq_recv");
            if (bench_stop) break;
            uint64_t now = now_ns();
            if (!r.received && now - start > (uint64_t)(timeout * 1e9)) { status = "timeout"; break; }
            if (r.received && now - r.last_ns > (uint64_t)(idle * 1e9)) { status = "idle"; break; }
        }
        if (topics) {
            size_t l = strlen(extra);
            snprintf(extra + l, sizeof extra - l, ",\"topic_errors\":%llu", (unsigned long long)topic_errors);
        }
        rstats_print(&r, "zmq-epgm", status, extra);
    }
    zmq_close(s);
    zmq_ctx_term(ctx);
    return 0;
}
