//! The consistent-hash ring of `load_balancing: ring_hash`, Ketama style: every endpoint
//! owns [`POINTS_PER_ENDPOINT`] points on a 64-bit circle, and a request's key belongs to the first point at
//! or after its hash. The points are hashed from the endpoint's address with xxHash64, so
//! every worker, every gateway and every reload that keeps an endpoint places it alike, and
//! removing an endpoint moves only the keys that were on it.

use xxhash_rust::xxh64::xxh64;

/// Points of each endpoint: the ring is never smaller than Envoy's default minimum ring
/// size (fewer points spread keys unevenly), and an endpoint's points do not depend on how
/// many others there are, so that adding or removing one moves no key between the others.
pub const POINTS_PER_ENDPOINT: usize = 1024;

/// The ring of a cluster's endpoints.
#[derive(Debug)]
pub struct Ring {
    /// (point, endpoint index), sorted by point.
    points: Vec<(u64, usize)>,
}

/// The hash of a request's key, as the ring places it.
pub fn hash_key(key: &[u8]) -> u64 {
    xxh64(key, 0)
}

impl Ring {
    /// A ring for endpoints given by their addresses, in the cluster's order.
    pub fn new<'a>(addresses: impl ExactSizeIterator<Item = &'a str>) -> Self {
        let mut points = Vec::with_capacity(POINTS_PER_ENDPOINT * addresses.len());
        let mut name = String::new();
        for (index, address) in addresses.enumerate() {
            for replica in 0..POINTS_PER_ENDPOINT {
                name.clear();
                name.push_str(address);
                name.push('_');
                name.push_str(&replica.to_string());
                points.push((xxh64(name.as_bytes(), 0), index));
            }
        }
        points.sort_unstable();
        Self { points }
    }

    /// The endpoint that owns `hash`: the first point at or after it, walking on (and
    /// around) past endpoints that `eligible` refuses. `None` when none is eligible.
    pub fn find(&self, hash: u64, eligible: impl Fn(usize) -> bool) -> Option<usize> {
        let start = self.points.partition_point(|(point, _)| *point < hash);
        let (after, before) = self.points.split_at(start);
        before
            .iter()
            .chain(after)
            .map(|(_, endpoint)| *endpoint)
            .find(|endpoint| eligible(*endpoint))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addresses(count: usize) -> Vec<String> {
        (0..count).map(|i| format!("10.0.0.{i}:8080")).collect()
    }

    fn ring(addresses: &[String]) -> Ring {
        Ring::new(addresses.iter().map(String::as_str))
    }

    fn owner(ring: &Ring, key: usize) -> usize {
        ring.find(hash_key(format!("user-{key}").as_bytes()), |_| true)
            .unwrap()
    }

    #[test]
    fn the_ring_has_at_least_the_minimum_points() {
        assert!(ring(&addresses(1)).points.len() >= 1024);
        assert_eq!(ring(&addresses(3)).points.len(), 3 * POINTS_PER_ENDPOINT);
    }

    #[test]
    fn keys_spread_evenly() {
        let ring = ring(&addresses(3));
        let mut counts = [0usize; 3];
        for key in 0..3000 {
            counts[owner(&ring, key)] += 1;
        }
        for count in counts {
            assert!((800..=1200).contains(&count), "uneven spread {counts:?}");
        }
    }

    #[test]
    fn removing_an_endpoint_moves_only_its_keys() {
        let all = addresses(4);
        let before = ring(&all);
        let after_addresses: Vec<String> = all.iter().filter(|a| *a != &all[2]).cloned().collect();
        let after = ring(&after_addresses);
        for key in 0..2000 {
            let was = &all[owner(&before, key)];
            let is = &after_addresses[owner(&after, key)];
            if was != &all[2] {
                assert_eq!(was, is, "key {key} moved off a kept endpoint");
            }
        }
    }

    #[test]
    fn an_ineligible_endpoint_hands_its_keys_to_the_next_point() {
        let ring = ring(&addresses(3));
        for key in 0..500 {
            let hash = hash_key(format!("user-{key}").as_bytes());
            let owner = ring.find(hash, |_| true).unwrap();
            let other = ring.find(hash, |endpoint| endpoint != owner).unwrap();
            assert_ne!(owner, other);
            if owner != 1 {
                assert_eq!(ring.find(hash, |endpoint| endpoint != 1), Some(owner));
            }
        }
        assert_eq!(ring.find(1, |_| false), None);
    }
}
