"""Real sources: the HTTP collector that tracking SDKs speak (`cem collect`), and the adapter
job that turns contact-centre exports and CloudEvents into touchpoints (`cem adapt`). The
mappings themselves are pure, in `processors/sources/`."""
