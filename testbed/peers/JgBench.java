// JgBench: JGroups 2.12 (Debian libjgroups-java) multicast sender/receiver for the peers benchmark.
//
//   java -Djava.net.preferIPv4Stack=true -Djgroups.bind_addr=ADDR -Djgroups.udp.mcast_addr=G \
//        -cp jgroups.jar:DIR JgBench send|recv --size B --count N --members M
//        [--port P] [--timeout S] [--idle S] [--linger S]
//
// Stack: UDP (TTL 1, bundles of at most 1400 bytes so every datagram fits one frame, 8 MB
// multicast receive buffer) : PING : MERGE2 (members that discovered nobody because loss ate the
// discovery frames merge within seconds: burst loss drops the FIRST 10 UDP frames) : pbcast.NAKACK (multicast retransmissions) : UNICAST :
// pbcast.STABLE : pbcast.GMS : UFC : MFC (credit flow control: the sender never outruns the
// slowest receiver) : FRAG2 (1200-byte fragments). The default 64 KB bundles rely on IP
// fragmentation and stall under frame loss. The sender waits until the view has M members,
// sends N messages, prints its line and stays (repairs) until SIGTERM or --linger seconds.
// Payload: 8-byte sequence + 8-byte System.nanoTime() (CLOCK_MONOTONIC on Linux, little endian
// like the C harnesses), then zeros. One JSON line per process.
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.util.Arrays;
import org.jgroups.JChannel;
import org.jgroups.Message;
import org.jgroups.ReceiverAdapter;
import org.jgroups.View;

public class JgBench {
    static int size = 1024, members = 4, port = 7600;
    static long count = 100000;
    static double timeout = 20, idle = 3, linger = 20;

    static String stack() {
        String bind = System.getProperty("jgroups.bind_addr", "127.0.0.1");
        String group = System.getProperty("jgroups.udp.mcast_addr", "239.255.90.3");
        String credits = System.getProperty("jgbench.credits", "2000000");  // UFC/MFC window, bytes
        return "UDP(bind_addr=" + bind + ";mcast_addr=" + group + ";mcast_port=" + port
            + ";ip_ttl=1;tos=0;loopback=true;enable_bundling=true;max_bundle_size=1400"
            + ";max_bundle_timeout=5;mcast_recv_buf_size=8000000;mcast_send_buf_size=2000000"
            + ";ucast_recv_buf_size=4000000;ucast_send_buf_size=2000000;discard_incompatible_packets=true"
            + ";thread_pool.min_threads=1;thread_pool.max_threads=4;oob_thread_pool.max_threads=4)"
            + ":PING(timeout=2000;num_initial_members=" + members + ")"
            + ":MERGE2(min_interval=1000;max_interval=3000)"
            + ":pbcast.NAKACK(use_mcast_xmit=true;retransmit_timeout=20,40,80,160,320;discard_delivered_msgs=true)"
            + ":UNICAST(timeout=100,200,400,800)"
            + ":pbcast.STABLE(stability_delay=50;desired_avg_gossip=2000;max_bytes=2000000)"
            + ":pbcast.GMS(join_timeout=3000;print_local_addr=false)"
            + ":UFC(max_credits=" + credits + ";min_threshold=0.4)"
            + ":MFC(max_credits=" + credits + ";min_threshold=0.4)"
            + ":FRAG2(frag_size=1200)";
    }

    // receiver state (receive() runs on JGroups' delivery thread; guarded by the class lock)
    static boolean[] seen;
    static float[] lat;
    static long received, dup, ooo, nextSeq, firstNs, lastNs;

    static synchronized boolean add(byte[] b, int off, int len) {
        if (len < 16) return false;
        long now = System.nanoTime();
        ByteBuffer bb = ByteBuffer.wrap(b, off, len).order(ByteOrder.LITTLE_ENDIAN);
        long seq = bb.getLong(), t = bb.getLong();
        if (seq < 0 || seq >= count) return false;
        if (seen[(int) seq]) { dup++; return false; }
        seen[(int) seq] = true;
        if (seq != nextSeq) ooo++;
        nextSeq = seq + 1;
        if (received == 0) firstNs = now;
        lastNs = now;
        lat[(int) received++] = (now - t) / 1e3f;
        if (received == count) JgBench.class.notifyAll();
        return received == count;
    }

    static synchronized String recvJson(String status) {
        double el = received > 1 ? (lastNs - firstNs) / 1e9 : 0;
        float[] l = Arrays.copyOf(lat, (int) received);
        Arrays.sort(l);
        StringBuilder s = new StringBuilder();
        s.append(String.format("{\"peer\":\"jgroups\",\"role\":\"recv\",\"status\":\"%s\",\"received\":%d,"
            + "\"expected\":%d,\"delivered\":%.4f,\"duplicates\":%d,\"out_of_order\":%d,\"elapsed_s\":%.3f,"
            + "\"rate_msgs_s\":%.0f", status, received, count, (double) received / count, dup, ooo, el,
            el > 0 ? received / el : 0));
        if (received > 0)
            s.append(String.format(",\"latency_us\":{\"p50\":%.1f,\"p99\":%.1f,\"max\":%.1f}",
                l[(int) Math.round(0.5 * (l.length - 1))], l[(int) Math.round(0.99 * (l.length - 1))],
                l[l.length - 1]));
        return s.append("}").toString();
    }

    static boolean printed;
    static volatile long sent;

    static synchronized void sendOnce(String status, long t0, int inView) {
        if (printed) return;
        printed = true;
        double el = (System.nanoTime() - t0) / 1e9;
        System.out.println(String.format("{\"peer\":\"jgroups\",\"role\":\"send\",\"status\":\"%s\",\"sent\":%d,"
            + "\"size\":%d,\"elapsed_s\":%.3f,\"rate_msgs_s\":%.0f,\"view_size\":%d}", status, sent, size, el, sent / el, inView));
        System.out.flush();
    }

    static synchronized void printOnce(String status) {
        if (printed) return;
        printed = true;
        System.out.println(recvJson(status));
        System.out.flush();
    }

    public static void main(String[] a) throws Exception {
        boolean sender = a.length > 0 && a[0].equals("send");
        for (int i = 1; i + 1 < a.length; i += 2) {
            String k = a[i], v = a[i + 1];
            switch (k) {
                case "--size": size = Integer.parseInt(v); break;
                case "--count": count = Long.parseLong(v); break;
                case "--members": members = Integer.parseInt(v); break;
                case "--port": port = Integer.parseInt(v); break;
                case "--timeout": timeout = Double.parseDouble(v); break;
                case "--idle": idle = Double.parseDouble(v); break;
                case "--linger": linger = Double.parseDouble(v); break;
                default: System.err.println("JgBench: unknown option " + k); System.exit(2);
            }
        }
        if (size < 16) { System.err.println("JgBench: --size >= 16"); System.exit(2); }
        seen = new boolean[(int) count];
        lat = new float[(int) count];
        JChannel ch = new JChannel(stack());
        ch.setReceiver(new ReceiverAdapter() {
            public void receive(Message m) { add(m.getRawBuffer(), m.getOffset(), m.getLength()); }
            public void viewAccepted(View v) { System.err.println("JgBench: view " + v); }
        });
        ch.connect("qs-peers-bench");
        long start = System.nanoTime();
        if (sender) {
            while (ch.getView().size() < members && System.nanoTime() - start < timeout * 1e9) Thread.sleep(20);
            final int inView = ch.getView().size();
            final long t0 = System.nanoTime();
            // SIGTERM while still sending: report what was sent (status "stopped")
            Runtime.getRuntime().addShutdownHook(new Thread(() -> sendOnce("stopped", t0, inView)));
            for (long i = 0; i < count; i++) {
                byte[] b = new byte[size];  // JGroups keeps a reference until it is stable: no reuse
                ByteBuffer bb = ByteBuffer.wrap(b).order(ByteOrder.LITTLE_ENDIAN);
                bb.putLong(i).putLong(System.nanoTime());
                ch.send(new Message(null, null, b));
                sent++;
            }
            sendOnce("sent", t0, inView);
            Thread.sleep((long) (linger * 1000));
        } else {
            Runtime.getRuntime().addShutdownHook(new Thread(() -> printOnce("signal")));  // SIGTERM
            String status;
            synchronized (JgBench.class) {
                for (;;) {
                    if (received == count) { status = "complete"; break; }
                    long now = System.nanoTime();
                    if (received == 0 && now - start > timeout * 1e9) { status = "timeout"; break; }
                    if (received > 0 && now - lastNs > idle * 1e9) { status = "idle"; break; }
                    JgBench.class.wait(100);
                }
            }
            printOnce(status);
        }
        Runtime.getRuntime().halt(0);  // the line is out; do not wait for a graceful leave
    }
}
