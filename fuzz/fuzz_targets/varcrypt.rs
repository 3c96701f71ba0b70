//! What stage 1 reads to open an encrypted /var: the keel header (two
//! copies), the filesystem template, the UKI's PCR signature and public
//! key, and the TPM's responses (a fake TPM answering every command with
//! the input). No input may panic; a header that parses encodes back to
//! one that parses the same.
#![no_main]

use keel_formats::varcrypt::{Header, Template};
use keel_tpm::pcrsig::{PcrSignature, Signed};
use keel_tpm::policy::RsaPublic;
use keel_tpm::{Sealed, Tpm, TpmError, Transport};

struct Replay<'a>(&'a [u8]);

impl Transport for Replay<'_> {
    fn transact(&mut self, _command: &[u8]) -> Result<Vec<u8>, TpmError> {
        Ok(self.0.to_vec())
    }
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(h) = Header::decode(data) {
        let again = Header::decode(&h.encode().expect("a parsed header encodes"));
        assert_eq!(again.as_ref(), Ok(&h), "round trip");
    }
    let half = data.len() / 2;
    let _ = Header::decode_either(&data[..half], &data[half..]);
    let _ = Template::decode(data);
    if let Ok(s) = PcrSignature::parse(data) {
        let _ = s.find(11, "00");
    }
    let _ = RsaPublic::from_der(data);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = RsaPublic::from_pem(text);
        let _ = keel_formats::varcrypt::parse_recovery_key(text);
    }
    let key = RsaPublic {
        modulus: vec![0xc5; 256],
        exponent: 65537,
    };
    let signed = Signed {
        approved: [1; 32],
        signature: vec![2; 256],
    };
    let sealed = Sealed {
        public: vec![3; 40],
        private: vec![4; 40],
    };
    let mut tpm = Tpm::new(Replay(data));
    let _ = keel_tpm::seal::seal(&mut tpm, &key, b"secret");
    let _ = keel_tpm::seal::unseal(&mut tpm, &key, &signed, &sealed, &[5; 32]);
    let _ = tpm.pcr_read(7);
});
