//! Wrapping 32-bit sequence numbers with serial-number arithmetic (RFC 1982): at a million
//! packets per second a u32 wraps in about 71 minutes, so every comparison must survive it.

use std::fmt;

/// A per-(sender, region) packet sequence number. Streams start at [`Seq::FIRST`].
///
/// Ordering is circular: `a` is before `b` when `b - a` (mod 2^32) is in `1..2^31`. `Seq` is
/// therefore deliberately not `Ord`; use [`Seq::is_before`] and [`Seq::distance_to`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Seq(pub u32);

impl Seq {
    /// The first sequence number of every stream.
    pub const FIRST: Seq = Seq(1);

    /// The next sequence number (wrapping).
    pub fn next(self) -> Seq {
        Seq(self.0.wrapping_add(1))
    }

    /// `self + n` (wrapping).
    pub fn advance(self, n: u32) -> Seq {
        Seq(self.0.wrapping_add(n))
    }

    /// Signed circular distance from `self` to `other`: positive when `other` is after `self`.
    pub fn distance_to(self, other: Seq) -> i64 {
        i64::from(other.0.wrapping_sub(self.0) as i32)
    }

    /// Whether `self` comes strictly before `other` in circular order.
    pub fn is_before(self, other: Seq) -> bool {
        self.distance_to(other) > 0
    }
}

impl fmt::Display for Seq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn order_survives_wrap_around() {
        let last = Seq(u32::MAX);
        assert!(last.is_before(last.next()));
        assert_eq!(last.next(), Seq(0));
        assert_eq!(last.distance_to(Seq(4)), 5);
        assert_eq!(Seq(4).distance_to(last), -5);
    }

    proptest! {
        #[test]
        fn adding_n_moves_exactly_n_ahead(start: u32, n in 1u32..(1 << 31)) {
            let a = Seq(start);
            let b = a.advance(n);
            prop_assert_eq!(a.distance_to(b), i64::from(n));
            prop_assert!(a.is_before(b));
            prop_assert!(!b.is_before(a));
        }
    }
}
