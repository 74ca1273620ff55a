"""The encrypted profile through the generated Python bindings: create, open, credentials,
settings, duress, panic wipe, errors."""

import asyncio
import os

import pytest

import handover_ffi as h
from conftest import FAST_KDF

run = asyncio.run


def passphrase(p):
    return h.Credential.PASSPHRASE(passphrase=p)


def keystore(key):
    return h.Credential.KEYSTORE_KEY(key=key)


def create(dir_, cred):
    return run(h.Profile.create(dir_, cred, FAST_KDF))


def test_version_names_the_protocol():
    assert "protocol 1" in h.version()


def test_default_kdf_settings_are_the_production_ones():
    kdf = h.default_kdf_settings()
    assert (kdf.memory_kib, kdf.iterations, kdf.parallelism) == (64 * 1024, 3, 1)


def test_create_set_reopen_and_read_settings(profile_dir):
    profile = create(profile_dir, passphrase("correct horse"))
    assert profile.is_open()
    assert profile.dir() == profile_dir
    assert run(profile.is_empty())
    run(profile.set_setting("theme", b"dark"))
    assert run(profile.get_setting("theme")) == b"dark"
    assert run(profile.get_setting("missing")) is None
    assert not run(profile.is_empty())
    run(profile.lock())
    assert not profile.is_open()

    again = run(h.Profile.open(profile_dir, passphrase("correct horse")))
    assert run(again.get_setting("theme")) == b"dark"
    assert run(again.delete_setting("theme"))
    assert not run(again.delete_setting("theme"))
    assert run(again.is_empty())


def test_drop_releases_the_store(profile_dir):
    profile = create(profile_dir, passphrase("pw one"))
    run(profile.set_setting("k", b"v"))
    # No close(): dropping the last reference must release sled's lock on the directory.
    del profile
    again = run(h.Profile.open(profile_dir, passphrase("pw one")))
    assert run(again.get_setting("k")) == b"v"


def test_wrong_passphrase_is_refused_and_changes_nothing(profile_dir):
    run(create(profile_dir, passphrase("right")).lock())
    with pytest.raises(h.HandoverError.WrongCredential) as err:
        run(h.Profile.open(profile_dir, passphrase("wrong")))
    assert "wrong passphrase or key" in str(err.value)
    run(h.Profile.open(profile_dir, passphrase("right")))


def test_keystore_key_profile(profile_dir):
    key = os.urandom(32)
    run(create(profile_dir, keystore(key)).lock())
    run(h.Profile.open(profile_dir, keystore(key)))
    other = bytes(32)
    with pytest.raises(h.HandoverError.WrongCredential):
        run(h.Profile.open(profile_dir, keystore(other)))


def test_passphrase_and_keystore_key_needs_both(profile_dir):
    key = os.urandom(32)
    both = h.Credential.PASSPHRASE_AND_KEYSTORE_KEY(passphrase="pin 2468", key=key)
    run(create(profile_dir, both).lock())
    with pytest.raises(h.HandoverError.WrongCredential):
        run(h.Profile.open(profile_dir, passphrase("pin 2468")))
    with pytest.raises(h.HandoverError.WrongCredential):
        run(h.Profile.open(profile_dir, keystore(key)))
    run(h.Profile.open(profile_dir, both))


def test_keystore_key_must_be_32_bytes(profile_dir):
    with pytest.raises(h.HandoverError.InvalidArgument) as err:
        create(profile_dir, keystore(b"short"))
    assert "32 bytes" in str(err.value)
    assert not os.path.exists(profile_dir)


def test_invalid_kdf_settings_are_rejected(profile_dir):
    with pytest.raises(h.HandoverError.InvalidArgument):
        run(h.Profile.create(profile_dir, passphrase("x"),
                             h.KdfSettings(memory_kib=1, iterations=0, parallelism=1)))


def test_create_twice_and_open_missing(profile_dir, tmp_path):
    first = create(profile_dir, passphrase("a"))
    run(first.lock())
    with pytest.raises(h.HandoverError.ProfileExists):
        create(profile_dir, passphrase("b"))
    with pytest.raises(h.HandoverError.ProfileNotFound):
        run(h.Profile.open(str(tmp_path / "nowhere"), passphrase("a")))


def test_change_credential(profile_dir):
    profile = create(profile_dir, passphrase("old"))
    run(profile.set_setting("k", b"v"))
    key = os.urandom(32)
    run(profile.change_credential(keystore(key)))
    run(profile.lock())
    with pytest.raises(h.HandoverError.WrongCredential):
        run(h.Profile.open(profile_dir, passphrase("old")))
    again = run(h.Profile.open(profile_dir, keystore(key)))
    assert run(again.get_setting("k")) == b"v"


def test_rekey_keeps_data(profile_dir):
    profile = create(profile_dir, passphrase("pw"))
    run(profile.set_setting("k", b"v"))
    run(profile.rekey(passphrase("pw")))
    assert run(profile.get_setting("k")) == b"v"
    with pytest.raises(h.HandoverError.WrongCredential):
        run(profile.rekey(passphrase("not it")))


def test_duress_passphrase_destroys_the_real_profile(profile_dir):
    profile = create(profile_dir, passphrase("real"))
    run(profile.set_setting("case", b"sensitive"))
    with pytest.raises(h.HandoverError.DuressMatchesCredential):
        run(profile.set_duress_passphrase("real"))
    run(profile.set_duress_passphrase("duress"))
    run(profile.lock())

    decoy = run(h.Profile.open(profile_dir, passphrase("duress")))
    assert run(decoy.is_empty())
    assert run(decoy.get_setting("case")) is None
    run(decoy.lock())
    with pytest.raises(h.HandoverError.WrongCredential):
        run(h.Profile.open(profile_dir, passphrase("real")))


def test_clear_duress(profile_dir):
    profile = create(profile_dir, passphrase("real"))
    run(profile.set_duress_passphrase("duress"))
    run(profile.clear_duress())
    run(profile.lock())
    with pytest.raises(h.HandoverError.WrongCredential):
        run(h.Profile.open(profile_dir, passphrase("duress")))


def test_panic_wipe_open_profile(profile_dir):
    profile = create(profile_dir, passphrase("pw"))
    run(profile.set_setting("case", b"sensitive"))
    run(profile.panic_wipe())
    assert not profile.is_open()
    with pytest.raises(h.HandoverError.ProfileLocked):
        run(profile.get_setting("case"))
    with pytest.raises(h.HandoverError.ProfileNotFound):
        run(h.Profile.open(profile_dir, passphrase("pw")))


def test_panic_wipe_locked_profile(profile_dir):
    run(create(profile_dir, passphrase("pw")).lock())
    run(h.panic_wipe_profile(profile_dir))
    with pytest.raises(h.HandoverError.ProfileNotFound):
        run(h.Profile.open(profile_dir, passphrase("pw")))
    # Wiping nothing is not an error.
    run(h.panic_wipe_profile(profile_dir))


def test_locked_profile_refuses_calls(profile_dir):
    profile = create(profile_dir, passphrase("pw"))
    run(profile.lock())
    run(profile.lock())  # idempotent
    with pytest.raises(h.HandoverError.ProfileLocked) as err:
        run(profile.set_setting("k", b"v"))
    assert "locked" in str(err.value)


def test_empty_setting_name_is_invalid(profile_dir):
    profile = create(profile_dir, passphrase("pw"))
    with pytest.raises(h.HandoverError.InvalidArgument):
        run(profile.set_setting("", b"v"))


def test_errors_share_one_base_class():
    assert issubclass(h.HandoverError.WrongCredential, h.HandoverError)
    assert issubclass(h.HandoverError.RelayUnreachable, h.HandoverError)
