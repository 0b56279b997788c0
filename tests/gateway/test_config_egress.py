"""The platform allow settings: validated at load, named in every error."""

from __future__ import annotations

import pytest

from gateway.config import ConfigError, Settings, load_settings


def test_allow_settings_are_normalised_and_build_the_policy() -> None:
    s = load_settings({}, {"CLASSGUARD_PLATFORM_ALLOW_NETWORKS": " 10.20.0.0/16, 127.0.0.1",
                           "CLASSGUARD_PLATFORM_ALLOW_HOSTS": "Janus.Truong.LAN."}, None)
    assert s.platform_allow_networks == ("10.20.0.0/16", "127.0.0.1/32")
    assert s.platform_allow_hosts == ("janus.truong.lan",)
    policy = s.egress_policy()
    assert policy.allows_address("10.20.1.1") and not policy.allows_address("10.21.1.1")
    assert policy.allows_address("192.168.1.2", "janus.truong.lan")
    assert not Settings().egress_policy().allows_address("127.0.0.1")


@pytest.mark.parametrize("name,value,words", [
    ("platform_allow_networks", "10.0.0.1/8", "has host bits set"),
    ("platform_allow_networks", "school", "is not an IP address or CIDR network"),
    ("platform_allow_networks", "0.0.0.0/0", "would allow every address"),
    ("platform_allow_networks", "169.254.0.0/16", "cloud metadata"),
    ("platform_allow_hosts", "10.0.0.1", "is not a host name"),
    ("platform_allow_hosts", "janus_server!", "is not a host name"),
])
def test_bad_allow_settings_are_refused(name: str, value: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings({}, {f"CLASSGUARD_{name.upper()}": value}, None)
    assert info.value.setting == name and words in str(info.value)
