"""Pure mappings from what other systems send (tracking SDKs, contact-centre exports,
CloudEvents) to the contract's touchpoints. No I/O: the HTTP collector and the adapter job
in `pipeline/sources/` call them."""
