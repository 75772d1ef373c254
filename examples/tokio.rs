//! The async API under tokio: a subscription is a `Stream` of messages, `publish_async`
//! waits for back-pressure without blocking a thread, and node events (peers up and down,
//! gaps) are a stream too. Nothing here is tokio-specific: any executor polls these futures.
//!
//! `cargo run --example tokio`

use std::time::Duration;

use futures_util::StreamExt;
use quicksilver::{Node, NodeEvent};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cluster = format!("example-tokio-{}", std::process::id());
    let consumer = Node::builder().cluster(&cluster).build()?;
    let mut events = consumer.events()?;
    let producer = Node::builder().cluster(&cluster).build()?;

    // The consumer hears of the producer (gossip and discovery run on the node's thread).
    while let Some(e) = events.next().await {
        if let NodeEvent::PeerUp { peer } = e {
            println!("peer up: {peer}");
            break;
        }
    }

    let mut ticks = consumer.subscribe("ticks")?;
    while producer.subscribers_of(&["ticks"])? == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let publisher = producer.publisher("ticks")?;
    let send = tokio::spawn(async move {
        for i in 0..1_000u32 {
            // Waits (without blocking the runtime) while the node's queues are full.
            publisher.publish_async(i.to_be_bytes().to_vec()).await?;
        }
        Ok::<_, quicksilver::PublishError>(())
    });

    let mut sum = 0u64;
    for _ in 0..1_000 {
        let m = ticks.next().await.ok_or("node closed")?;
        sum += u64::from(u32::from_be_bytes(m.payload[..4].try_into()?));
    }
    send.await??;
    println!(
        "received 1000 ticks, sum {sum} (expected {})",
        999 * 1000 / 2
    );
    drop(ticks);
    producer.shutdown()?;
    consumer.shutdown()?;
    Ok(())
}
