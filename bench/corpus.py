"""A synthetic certificate corpus for the benchmarks: N distinct leaf certificates in PEM bundles.

Certificates are realistic in shape (mixed RSA/ECDSA subject keys, 1-100 DNS SANs skewed toward
few, six issuing CAs, KU/EKU/BC/AKI/SKI/CRL DP/AIA) and in dates: about 4% are expired, about 2%
expire within the next 30 days, a few are not yet valid. Subject keys come from a small pool
generated once (RSA key generation runs at ~30/s); every certificate is still distinct through
its serial, subject, SANs and validity. The corpus is cached under ``bench/.corpus/<N>/`` and
only generated when its manifest (``bench/.corpus/<N>.manifest.json``) is missing.

    python -m bench.corpus --count 100000
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import multiprocessing
import os
import random
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID, NameOID

BENCH_DIR = Path(__file__).resolve().parent
CORPUS_ROOT = BENCH_DIR / ".corpus"
MANIFEST = "manifest.json"
FORMAT_VERSION = 1
PER_FILE = 5000

# (label, algorithm, size, pool size, weight): the subject-key mix and how many keys each pool holds.
SUBJECT_KEYS: tuple[tuple[str, str, int, int, int], ...] = (
    ("ec-p256", "ec", 256, 24, 45),
    ("ec-p384", "ec", 384, 8, 10),
    ("rsa-2048", "rsa", 2048, 12, 35),
    ("rsa-3072", "rsa", 3072, 4, 7),
    ("rsa-4096", "rsa", 4096, 2, 3),
)
# (common name, algorithm, weight): most signatures are ECDSA because RSA signing is ~30x slower.
ISSUERS: tuple[tuple[str, str, int], ...] = (
    ("Bench EC Issuing CA 1", "ec", 34),
    ("Bench EC Issuing CA 2", "ec", 24),
    ("Bench EC Issuing CA 3", "ec", 18),
    ("Bench EC Issuing CA 4", "ec", 14),
    ("Bench RSA Issuing CA 1", "rsa", 6),
    ("Bench RSA Issuing CA 2", "rsa", 4),
)
# (share, days-until-expiry range); the rest of the corpus expires 31-800 days from generation.
EXPIRED = (0.04, (-400.0, -0.5))
EXPIRING = (0.02, (0.5, 29.0))
NOT_YET_VALID = 0.003
LIFETIMES_DAYS = ((90, 40), (397, 40), (730, 20))
DOMAINS = tuple(f"{name}.example" for name in ("corp", "shop", "mail", "intra", "cloud", "api", "cdn", "dev"))


@dataclass(frozen=True, slots=True)
class Corpus:
    directory: Path
    count: int
    files: list[Path]
    generated_at: dt.datetime
    generation_seconds: float | None  # None when the cached corpus was reused

    @property
    def total_bytes(self) -> int:
        return sum(path.stat().st_size for path in self.files)


def corpus_dir(count: int, root: Path = CORPUS_ROOT) -> Path:
    return root / str(count)


def manifest_path(count: int, root: Path = CORPUS_ROOT) -> Path:
    # Beside the directory, not in it: the import walks the directory and would reject the manifest.
    return root / f"{count}.{MANIFEST}"


def load_corpus(count: int, root: Path = CORPUS_ROOT) -> Corpus | None:
    """The cached corpus of ``count`` certificates, or None if it is missing or incomplete."""
    directory = corpus_dir(count, root)
    path = manifest_path(count, root)
    if not path.exists() and (directory / MANIFEST).exists():
        os.replace(directory / MANIFEST, path)  # a corpus made when the manifest lived inside
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if manifest.get("version") != FORMAT_VERSION or manifest.get("count") != count:
        return None
    files = [directory / name for name in manifest["files"]]
    if not all(path.is_file() for path in files):
        return None
    return Corpus(directory, count, files, dt.datetime.fromisoformat(manifest["generated_at"]), None)


def ensure_corpus(
    count: int, *, root: Path = CORPUS_ROOT, per_file: int = PER_FILE, processes: int | None = None
) -> Corpus:
    """Returns the cached corpus, generating it (in parallel) when it is missing."""
    cached = load_corpus(count, root)
    if cached is not None:
        return cached
    return generate_corpus(count, root=root, per_file=per_file, processes=processes)


# --- keys -----------------------------------------------------------------------------------------


def _new_key(algorithm: str, size: int) -> ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey:
    if algorithm == "ec":
        return ec.generate_private_key(ec.SECP256R1() if size == 256 else ec.SECP384R1())
    return rsa.generate_private_key(public_exponent=65537, key_size=size)


def _pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _make_key_material() -> dict[str, Any]:
    """Private keys of the issuing CAs and public keys of the subject pool, as PEM for the workers."""
    issuers = [(name, _pem(_new_key(alg, 256 if alg == "ec" else 2048))) for name, alg, _ in ISSUERS]
    pools: dict[str, list[bytes]] = {}
    for label, alg, size, pool, _ in SUBJECT_KEYS:
        pools[label] = [
            _new_key(alg, size)
            .public_key()
            .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
            for _ in range(pool)
        ]
    return {"issuers": issuers, "pools": pools}


# --- generation (runs in worker processes) --------------------------------------------------------

_STATE: dict[str, Any] = {}


def _init_worker(material: dict[str, Any], now_iso: str) -> None:
    issuers = []
    for name, key_pem in material["issuers"]:
        key = serialization.load_pem_private_key(key_pem, password=None)
        slug = name.lower().replace(" ", "-")
        issuers.append(
            {
                "name": x509.Name(
                    [
                        x509.NameAttribute(NameOID.COUNTRY_NAME, "XX"),
                        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Bench Trust Services"),
                        x509.NameAttribute(NameOID.COMMON_NAME, name),
                    ]
                ),
                "key": key,
                "hash": hashes.SHA256(),
                "aki": x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()),  # type: ignore[arg-type]
                "crl": x509.CRLDistributionPoints(
                    [
                        x509.DistributionPoint(
                            [x509.UniformResourceIdentifier(f"http://crl.bench.example/{slug}.crl")],
                            None,
                            None,
                            None,
                        )
                    ]
                ),
                "aia": x509.AuthorityInformationAccess(
                    [
                        x509.AccessDescription(
                            AuthorityInformationAccessOID.OCSP,
                            x509.UniformResourceIdentifier(f"http://ocsp.bench.example/{slug}"),
                        ),
                        x509.AccessDescription(
                            AuthorityInformationAccessOID.CA_ISSUERS,
                            x509.UniformResourceIdentifier(f"http://pki.bench.example/{slug}.cer"),
                        ),
                    ]
                ),
            }
        )
    pools = {}
    for label, _alg, _size, _pool, _ in SUBJECT_KEYS:
        keys = [serialization.load_pem_public_key(pem) for pem in material["pools"][label]]
        pools[label] = [(key, x509.SubjectKeyIdentifier.from_public_key(key)) for key in keys]  # type: ignore[arg-type]
    _STATE.update(
        issuers=issuers,
        issuer_weights=[weight for _, _, weight in ISSUERS],
        pools=pools,
        pool_labels=[label for label, *_ in SUBJECT_KEYS],
        pool_weights=[weight for *_, weight in SUBJECT_KEYS],
        now=dt.datetime.fromisoformat(now_iso),
    )


def _san_count(rng: random.Random) -> int:
    """1-100, skewed toward few: about 55% have 1-2, 85% at most 6, 2% more than 40."""
    roll = rng.random()
    if roll < 0.55:
        return rng.randint(1, 2)
    if roll < 0.85:
        return rng.randint(3, 6)
    if roll < 0.98:
        return rng.randint(7, 40)
    return rng.randint(41, 100)


def _validity(rng: random.Random, now: dt.datetime) -> tuple[dt.datetime, dt.datetime]:
    roll = rng.random()
    if roll < EXPIRED[0]:
        days = rng.uniform(*EXPIRED[1])
    elif roll < EXPIRED[0] + EXPIRING[0]:
        days = rng.uniform(*EXPIRING[1])
    else:
        days = rng.uniform(31.0, 800.0)
    not_after = (now + dt.timedelta(days=days)).replace(microsecond=0)
    lifetime = rng.choices([d for d, _ in LIFETIMES_DAYS], [w for _, w in LIFETIMES_DAYS])[0]
    not_before = not_after - dt.timedelta(days=lifetime)
    if rng.random() < NOT_YET_VALID and days > 31:
        not_before = now + dt.timedelta(days=rng.uniform(1.0, 30.0))
    elif not_before > now:
        # A long remaining life with a short lifetime: issued recently rather than in the future.
        not_before = now - dt.timedelta(days=rng.uniform(0.5, 60.0))
    return not_before.replace(microsecond=0), not_after


def _certificate(index: int, rng: random.Random) -> bytes:
    state = _STATE
    issuer = rng.choices(state["issuers"], state["issuer_weights"])[0]
    label = rng.choices(state["pool_labels"], state["pool_weights"])[0]
    public_key, ski = rng.choice(state["pools"][label])
    domain = DOMAINS[index % len(DOMAINS)]
    host = f"host{index}.{domain}"
    names: list[x509.GeneralName] = [x509.DNSName(host)]
    for extra in range(1, _san_count(rng)):
        names.append(x509.DNSName(f"*.{host}" if extra == 1 and rng.random() < 0.3 else f"s{extra}.{host}"))
    not_before, not_after = _validity(rng, state["now"])
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "XX"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, f"Bench Org {index % 97}"),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, f"Unit {index % 13}"),
            x509.NameAttribute(NameOID.COMMON_NAME, host),
        ]
    )
    eku = [ExtendedKeyUsageOID.SERVER_AUTH]
    if rng.random() < 0.4:
        eku.append(ExtendedKeyUsageOID.CLIENT_AUTH)
    is_rsa = label.startswith("rsa")
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer["name"])
        .public_key(public_key)
        .serial_number(rng.getrandbits(127) | (1 << 64))
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=is_rsa,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(eku), critical=False)
        .add_extension(issuer["aki"], critical=False)
        .add_extension(ski, critical=False)
        .add_extension(issuer["crl"], critical=False)
        .add_extension(issuer["aia"], critical=False)
    )
    return builder.sign(issuer["key"], issuer["hash"]).public_bytes(serialization.Encoding.PEM)


def _write_file(job: tuple[Path, int, int, int]) -> tuple[str, int]:
    path, start, stop, seed = job
    rng = random.Random(seed)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as handle:
        for index in range(start, stop):
            handle.write(_certificate(index, rng))
    os.replace(tmp, path)
    return path.name, stop - start


def generate_corpus(
    count: int, *, root: Path = CORPUS_ROOT, per_file: int = PER_FILE, processes: int | None = None
) -> Corpus:
    if count < 1:
        raise ValueError("count must be at least 1")
    directory = corpus_dir(count, root)
    manifest_path(count, root).unlink(missing_ok=True)
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    started = time.perf_counter()
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    material = _make_key_material()
    seed = random.SystemRandom().getrandbits(64)
    jobs = [
        (directory / f"bundle-{number:05d}.pem", start, min(start + per_file, count), seed + number)
        for number, start in enumerate(range(0, count, per_file))
    ]
    processes = processes or os.cpu_count() or 1
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(processes, initializer=_init_worker, initargs=(material, now.isoformat())) as pool:
        names = [name for name, _ in pool.imap(_write_file, jobs)]
    seconds = time.perf_counter() - started
    manifest = {
        "version": FORMAT_VERSION,
        "count": count,
        "per_file": per_file,
        "files": names,
        "generated_at": now.isoformat(),
        "generation_seconds": round(seconds, 1),
    }
    tmp = root / f"{count}.{MANIFEST}.tmp"
    tmp.write_text(json.dumps(manifest, indent=1))
    os.replace(tmp, manifest_path(count, root))
    return Corpus(directory, count, [directory / name for name in names], now, seconds)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.corpus", description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=1_000_000, help="Number of certificates.")
    parser.add_argument("--per-file", type=int, default=PER_FILE, help="Certificates per PEM bundle.")
    parser.add_argument(
        "--processes", type=int, default=None, help="Generator processes (default: all cores)."
    )
    parser.add_argument("--force", action="store_true", help="Regenerate even if cached.")
    args = parser.parse_args(argv)
    if args.count < 1 or args.per_file < 1:
        parser.error("--count and --per-file must be positive")
    if args.force:
        corpus = generate_corpus(args.count, per_file=args.per_file, processes=args.processes)
    else:
        corpus = ensure_corpus(args.count, per_file=args.per_file, processes=args.processes)
    how = "cached" if corpus.generation_seconds is None else f"generated in {corpus.generation_seconds:.1f} s"
    print(f"{corpus.count} certificates in {len(corpus.files)} files under {corpus.directory} ({how})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
