//! Checks for the fuzz targets (`fuzz/`, nightly) and their stable property-test twins: each
//! takes arbitrary bytes and panics only if the code under test breaks a promise.

use crate::frame::{Decoder, Frame};

/// The frame decoder fed `data` in pieces whose sizes the data's own bytes choose: it never
/// panics, never holds more than its bound, and every frame it gives has a body within the
/// limit; a frame encoded and fed back comes out the same.
pub fn frame_decoder(data: &[u8]) {
    let Some((&limit, rest)) = data.split_first() else { return };
    let max_body = u32::from(limit) * 64;
    let mut decoder = Decoder::new(max_body);
    let mut at = 0;
    let mut step = 1;
    while at < rest.len() {
        let end = (at + step).min(rest.len());
        decoder.extend_from_slice(&rest[at..end]);
        step = usize::from(rest[at] % 97) + 1;
        at = end;
        assert!(decoder.capacity() <= decoder.capacity_bound(), "over the memory bound");
        loop {
            match decoder.decode() {
                Ok(Some(frame)) => {
                    assert!(frame.body.len() <= max_body as usize, "a body over the limit");
                    let mut wire = Vec::new();
                    frame.encode(&mut wire);
                    let mut again = Decoder::new(max_body);
                    again.extend_from_slice(&wire);
                    let back: Frame = again.decode().ok().flatten().expect("its own encoding");
                    assert_eq!((back.kind, back.request_id), (frame.kind, frame.request_id));
                    assert_eq!(back.body, frame.body);
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! The stable twin of the fuzz target, with a budget that fits CI.

    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        #[test]
        fn frame_decoding(data in proptest::collection::vec(any::<u8>(), 0..4096)) {
            frame_decoder(&data);
        }

        /// Whole frames (and a torn one) in arbitrary pieces, so cases reach past a header.
        #[test]
        fn frames_in_pieces(
            bodies in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 1..5),
            cut in any::<u16>(),
            limit in 1u8..=255,
        ) {
            let mut data = vec![limit];
            for (i, body) in bodies.iter().enumerate() {
                crate::frame::encode(40 + i as u16, i as u64, body, &mut data);
            }
            let keep = data.len() - usize::from(cut) % (data.len() - 1);
            data.truncate(keep);
            frame_decoder(&data);
        }
    }
}
