//! The smallest pub/sub: two nodes in one process on loopback multicast. One subscribes to
//! `greetings`, the other waits until it sees that subscriber, publishes three messages and
//! flushes; the subscriber prints them.
//!
//! `cargo run --example basic`. Across two terminals or hosts the same code runs as two
//! programs (or use `qs sub --topic greetings` / `qs pub --topic greetings`).

use std::time::{Duration, Instant};

use quicksilver::Node;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // A cluster name of our own: nodes only talk within their cluster.
    let cluster = format!("example-basic-{}", std::process::id());
    let subscriber = Node::builder().cluster(&cluster).build()?;
    let publisher = Node::builder().cluster(&cluster).build()?;

    let greetings = subscriber.subscribe("greetings")?;
    // Discovery takes a few hundred milliseconds; messages published before the subscription
    // reached the publisher are not for this subscriber.
    let start = Instant::now();
    while publisher.subscribers_of(&["greetings"])? == 0 {
        if start.elapsed() > Duration::from_secs(10) {
            return Err("no subscriber appeared (run `qs doctor`)".into());
        }
        std::thread::sleep(Duration::from_millis(10));
    }

    let topic = publisher.publisher("greetings")?; // declared once, used for every message
    for text in ["hello", "from", "quicksilver"] {
        topic.publish(text)?; // blocks while the send queue is full: back-pressure, not loss
    }
    publisher.flush(Duration::from_secs(5))?; // until the subscriber's region acknowledged all

    for _ in 0..3 {
        let m = greetings.recv_timeout(Duration::from_secs(5))?;
        println!(
            "{} from {}: {}",
            m.topic,
            m.sender,
            String::from_utf8_lossy(&m.payload)
        );
    }
    println!("delivered: {}", subscriber.stats()?.core.delivered);
    drop(greetings);
    subscriber.shutdown()?;
    publisher.shutdown()?;
    Ok(())
}
