//! [`Publisher`]: a topic declared once, published on many times (blocking, non-blocking or
//! async), without checking and hashing the topic's name at every message.
//!
//! It owns nothing but a share of the node's publish channel: back-pressure, ordering and
//! delivery are the node's (see [`Node::publish`](crate::Node::publish)). It does not keep the
//! node running: once the node shuts down its publishes return [`PublishError::Closed`].

use std::sync::Arc;

use bytes::Bytes;
use qs_transport::TopicId;

use crate::node::{send_publish, send_publish_async, try_send_publish, Shared};
use crate::PublishError;

/// Publishes on one topic; made by [`Node::publisher`](crate::Node::publisher). Cheap to
/// clone (one per task or thread is fine); messages of one publisher node stay in order
/// whichever clone sent them.
///
/// ```
/// # fn main() -> Result<(), quicksilver::Error> {
/// let node = quicksilver::Node::builder().cluster("publisher-doc").build()?;
/// let quotes = node.subscribe("quotes")?;
/// let publisher = node.publisher("quotes")?;
/// for i in 0..3 {
///     publisher.publish(format!("tick {i}"))?;
/// }
/// assert_eq!(&quotes.recv()?.payload[..], b"tick 0");
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Publisher {
    topic: TopicId,
    name: Arc<str>,
    max_message_bytes: usize,
    tx: flume::Sender<(TopicId, Bytes)>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("topic", &self.name)
            .finish()
    }
}

impl Publisher {
    pub(crate) fn new(
        topic: TopicId,
        name: Arc<str>,
        max_message_bytes: usize,
        tx: flume::Sender<(TopicId, Bytes)>,
        shared: Arc<Shared>,
    ) -> Publisher {
        Publisher {
            topic,
            name,
            max_message_bytes,
            tx,
            shared,
        }
    }

    /// The topic's name.
    pub fn topic(&self) -> &str {
        &self.name
    }

    /// The topic's wire id.
    pub fn topic_id(&self) -> TopicId {
        self.topic
    }

    fn check(&self, payload: impl Into<Bytes>) -> Result<(TopicId, Bytes), PublishError> {
        let payload = payload.into();
        if payload.len() > self.max_message_bytes {
            return Err(PublishError::TooLarge {
                len: payload.len(),
                max: self.max_message_bytes,
            });
        }
        Ok((self.topic, payload))
    }

    /// Publishes `payload`, blocking while the send queue is full.
    pub fn publish(&self, payload: impl Into<Bytes>) -> Result<(), PublishError> {
        send_publish(&self.tx, &self.shared, self.check(payload)?)
    }

    /// Publishes without blocking: [`PublishError::WouldBlock`] when the send queue is full.
    pub fn try_publish(&self, payload: impl Into<Bytes>) -> Result<(), PublishError> {
        try_send_publish(&self.tx, &self.shared, self.check(payload)?)
    }

    /// Publishes `payload`, waiting (without blocking a thread) while the send queue is full:
    /// back-pressure for async code. Runtime-agnostic: any executor polls it.
    pub async fn publish_async(&self, payload: impl Into<Bytes>) -> Result<(), PublishError> {
        let msg = self.check(payload)?;
        send_publish_async(&self.tx, &self.shared, msg).await
    }
}
