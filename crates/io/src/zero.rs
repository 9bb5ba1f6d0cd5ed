//! [`is_zero`]: whether a buffer holds only zero bytes.

/// Whether every byte of `buf` is zero. Checks 16 bytes at a time in blocks of 256 (the
/// compiler vectorises it), so it runs at memory speed and stops early on data.
#[must_use]
pub fn is_zero(buf: &[u8]) -> bool {
    let mut blocks = buf.chunks_exact(256);
    for block in &mut blocks {
        let mut acc = 0u128;
        for word in block.chunks_exact(16) {
            let mut w = [0u8; 16];
            w.copy_from_slice(word);
            acc |= u128::from_ne_bytes(w);
        }
        if acc != 0 {
            return false;
        }
    }
    let mut words = blocks.remainder().chunks_exact(16);
    let acc = words.by_ref().fold(0u128, |acc, word| {
        let mut w = [0u8; 16];
        w.copy_from_slice(word);
        acc | u128::from_ne_bytes(w)
    });
    acc == 0 && words.remainder().iter().all(|&b| b == 0)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn empty_and_zero_buffers_are_zero() {
        assert!(is_zero(&[]));
        assert!(is_zero(&[0; 1]));
        assert!(is_zero(&vec![0; (4 << 20) + 7]));
        let mut last = vec![0u8; (4 << 20) + 7];
        *last.last_mut().unwrap() = 1;
        assert!(!is_zero(&last));
    }

    #[test]
    fn one_set_byte_anywhere_is_not_zero() {
        for len in [1usize, 15, 16, 17, 255, 256, 257, 4096, 4099] {
            for at in [0, len / 2, len - 1] {
                let mut buf = vec![0u8; len];
                buf[at] = 0x80;
                assert!(!is_zero(&buf), "len {len}, byte {at}");
            }
        }
    }

    proptest! {
        #[test]
        fn agrees_with_the_naive_check(buf in proptest::collection::vec(
            prop_oneof![9 => Just(0u8), 1 => any::<u8>()], 0..2048)) {
            prop_assert_eq!(is_zero(&buf), buf.iter().all(|&b| b == 0));
        }
    }
}
