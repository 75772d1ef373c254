//! Network parameters: latency, jitter, loss models, duplication and corruption.

use std::time::Duration;

use qs_transport::Prng;

/// How a receiver's link loses datagrams. Each receiver keeps its own loss state, so losses at
/// different receivers are independent (as on a real switched LAN where drops happen in the
/// receivers' queues and NICs).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum LossModel {
    /// Nothing is lost.
    #[default]
    None,
    /// Each datagram is lost independently with this probability.
    Bernoulli(f64),
    /// The two-state Gilbert–Elliott burst model. Before each datagram the link moves between
    /// the good and the bad state with the given transition probabilities, then loses the
    /// datagram with the loss probability of the state it is in.
    GilbertElliott {
        /// Probability of moving from the good to the bad state, per datagram.
        p_good_to_bad: f64,
        /// Probability of moving from the bad to the good state, per datagram.
        p_bad_to_good: f64,
        /// Loss probability while in the good state.
        loss_in_good: f64,
        /// Loss probability while in the bad state.
        loss_in_bad: f64,
    },
}

/// The per-receiver state of a loss model (only Gilbert–Elliott has any).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct LossState {
    bad: bool,
}

impl LossState {
    /// Decides whether the next datagram on this link is lost, advancing the state.
    pub(crate) fn lose(&mut self, model: &LossModel, rng: &mut Prng) -> bool {
        match *model {
            LossModel::None => false,
            LossModel::Bernoulli(p) => rng.chance(p),
            LossModel::GilbertElliott {
                p_good_to_bad,
                p_bad_to_good,
                loss_in_good,
                loss_in_bad,
            } => {
                let flip = if self.bad {
                    p_bad_to_good
                } else {
                    p_good_to_bad
                };
                if rng.chance(flip) {
                    self.bad = !self.bad;
                }
                rng.chance(if self.bad { loss_in_bad } else { loss_in_good })
            }
        }
    }
}

/// The simulated network, all of it derived from one seed.
///
/// Build it with struct update syntax: `SimConfig { seed, loss: LossModel::Bernoulli(0.01),
/// ..SimConfig::default() }`.
#[derive(Debug, Clone, PartialEq)]
pub struct SimConfig {
    /// The seed every random decision of the network derives from.
    pub seed: u64,
    /// Base one-way delay of every datagram.
    pub latency: Duration,
    /// Extra delay drawn uniformly in `[0, jitter]` per datagram and receiver. Non-zero jitter
    /// can reorder datagrams between a pair of nodes; zero jitter keeps them FIFO.
    pub jitter: Duration,
    /// Loss model of every receiver without a per-node override.
    pub loss: LossModel,
    /// Probability that a datagram which survived loss is delivered twice.
    pub duplicate: f64,
    /// How much later than the original the duplicate copy arrives.
    pub duplicate_delay: Duration,
    /// Probability that a delivered copy has one random bit flipped.
    pub corrupt: f64,
    /// Extra probability of losing a unicast control-class datagram (on top of `loss`): aims
    /// faults at the recovery protocol's tokens, acknowledgements and requests.
    pub unicast_control_loss: f64,
}

impl Default for SimConfig {
    fn default() -> SimConfig {
        SimConfig {
            seed: 0,
            latency: Duration::from_micros(100),
            jitter: Duration::ZERO,
            loss: LossModel::None,
            duplicate: 0.0,
            duplicate_delay: Duration::from_micros(10),
            corrupt: 0.0,
            unicast_control_loss: 0.0,
        }
    }
}

impl SimConfig {
    /// The default network with the given seed.
    pub fn with_seed(seed: u64) -> SimConfig {
        SimConfig {
            seed,
            ..SimConfig::default()
        }
    }
}

/// The seed in the `SIM_SEED` environment variable (decimal, or hex with `0x`), else `default`.
///
/// Tests take their seed from here and print [`replay_hint`] on failure, so
/// `SIM_SEED=… cargo test …` replays the failing run.
pub fn seed_from_env(default: u64) -> u64 {
    match std::env::var("SIM_SEED") {
        Ok(s) => parse_seed(&s).unwrap_or_else(|| panic!("SIM_SEED={s:?} is not a u64")),
        Err(_) => default,
    }
}

fn parse_seed(s: &str) -> Option<u64> {
    let s = s.trim();
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

/// The command line that replays a run of `test_name` with `seed`.
pub fn replay_hint(seed: u64, test_name: &str) -> String {
    format!("SIM_SEED={seed} cargo test {test_name} -- --nocapture")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_parse_in_decimal_and_hex() {
        assert_eq!(parse_seed("42"), Some(42));
        assert_eq!(parse_seed(" 0x2a "), Some(42));
        assert_eq!(parse_seed("nope"), None);
    }

    #[test]
    fn gilbert_elliott_stays_bad_then_recovers() {
        let model = LossModel::GilbertElliott {
            p_good_to_bad: 1.0,
            p_bad_to_good: 0.0,
            loss_in_good: 0.0,
            loss_in_bad: 1.0,
        };
        let mut state = LossState::default();
        let mut rng = Prng::new(1);
        assert!((0..10).all(|_| state.lose(&model, &mut rng)));
        let healed = LossModel::GilbertElliott {
            p_good_to_bad: 0.0,
            p_bad_to_good: 1.0,
            loss_in_good: 0.0,
            loss_in_bad: 1.0,
        };
        assert!((0..10).all(|_| !state.lose(&healed, &mut rng)));
    }

    #[test]
    fn no_loss_never_draws() {
        let mut rng = Prng::new(3);
        let mut copy = rng.clone();
        assert!(!LossState::default().lose(&LossModel::None, &mut rng));
        assert_eq!(rng.next_u64(), copy.next_u64());
    }
}
