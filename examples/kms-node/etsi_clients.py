"""ETSI GS QKD 014 round trips against two kms-node instances with two
client libraries we did not write, from PyPI:

- etsi-qkd-014-client 0.9.0 (LIP6, Sorbonne Universite): QKD014Client
- qkdsec 0.3.0: qkdsec.client.ETSI014Client

Install (the test and .ci/run do this in a virtual environment):
    python3 -m venv .venv-etsi && .venv-etsi/bin/pip install \
        etsi-qkd-014-client==0.9.0 qkdsec==0.3.0

Usage: etsi_clients.py CERT_DIR A_PORT B_PORT
(CERT_DIR holds ca.pem, SAE_A.pem/.key, SAE_B.pem/.key.) Prints one line
per check; exit status 0 if all passed, 1 if one failed, 77 if a library
is missing.
"""

import base64
import os
import sys

try:
    from etsi_qkd_014_client import QKD014Client
    from qkdsec.client import ETSI014Client
except ImportError as e:  # pragma: no cover - reported to the test
    print(f"missing client library: {e}")
    sys.exit(77)


def main() -> int:
    certs, a_port, b_port = sys.argv[1], sys.argv[2], sys.argv[3]
    ca = os.path.join(certs, "ca.pem")

    def pair(sae):
        return os.path.join(certs, f"{sae}.pem"), os.path.join(certs, f"{sae}.key")

    failures = 0

    def check(name, ok, detail=""):
        nonlocal failures
        print(f"{'ok  ' if ok else 'FAIL'} {name} {detail}")
        if not ok:
            failures += 1

    # --- etsi-qkd-014-client (LIP6) -------------------------------------
    a_cert, a_key = pair("SAE_A")
    b_cert, b_key = pair("SAE_B")
    master = QKD014Client(f"127.0.0.1:{a_port}", a_cert, a_key, ca)
    slave = QKD014Client(f"127.0.0.1:{b_port}", b_cert, b_key, ca)
    code, status = master.get_status("SAE_B")
    check("lip6 get_status", code == 200 and status.source_kme_id == "KME_A", f"{code}")
    for number, size in [(None, None), (4, 512)]:
        code, enc = master.get_key("SAE_B", number=number, size=size)
        check(f"lip6 get_key number={number} size={size}", code == 200, f"{code}")
        if code != 200:
            continue
        ids = [k.key_id for k in enc.keys]
        code, dec = slave.get_key_with_key_IDs("SAE_A", ids)
        check(f"lip6 get_key_with_key_IDs ({len(ids)} keys)", code == 200, f"{code}")
        if code == 200:
            same = [(k.key_id, k.key) for k in enc.keys] == [(k.key_id, k.key) for k in dec.keys]
            bits = {len(base64.b64decode(k.key)) * 8 for k in enc.keys}
            check("lip6 keys match", same and bits == {size or 256}, f"bits={bits}")
        code, _ = slave.get_key_with_key_IDs("SAE_A", ids)
        check("lip6 second fetch refused", code == 400, f"{code}")

    # --- qkdsec -----------------------------------------------------------
    m = ETSI014Client(f"https://127.0.0.1:{a_port}", client_cert=pair("SAE_A"), verify=ca)
    s = ETSI014Client(f"https://127.0.0.1:{b_port}", client_cert=pair("SAE_B"), verify=ca)
    st = m.status("SAE_B")
    check("qkdsec status", st.target_kme_id == "KME_B" and st.slave_sae_id == "SAE_B")
    for method in ["GET", "POST"]:
        enc = m.get_enc_keys("SAE_B", number=3, size=256, method=method)
        # qkdsec names the path's SAE ID slave_sae_id; ETSI 014 puts the
        # master's ID in the dec_keys path, so the master's ID is passed.
        dec = s.get_dec_keys("SAE_A", key_ids=[k.key_id for k in enc])
        same = [(k.key_id, k.key) for k in enc] == [(k.key_id, k.key) for k in dec]
        check(f"qkdsec enc ({method}) / dec keys match", same and len(enc) == 3)
    try:
        s.get_dec_keys("SAE_A", key_ids=[k.key_id for k in enc])
        check("qkdsec second fetch refused", False)
    except Exception as e:  # KMEHTTPError
        check("qkdsec second fetch refused", getattr(e, "status_code", 400) == 400, type(e).__name__)

    print(f"{failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
