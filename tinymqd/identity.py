"""Who this node is: a random node id that belongs to one database file on one host,
and new streams for every run.

The node id is stored in the database together with what it is bound to: the host's
/etc/machine-id and the file's inode. A database copied to another host or file (an
image, a clone, a restored backup) no longer matches and takes a new node id.

Whatever the database went through, every start of tinymqd closes the streams new rows
were numbered into, so the rows inserted from now on go to new streams with random ids
(numbering.py): sequence numbers a peer may have seen from another copy of this
database, or from this one before a backup was restored, are never used again for a
different row. Rows already numbered keep their stream, node and number, so a peer that
has stored them recognises them and does not store them twice.
"""

import collections
import os
import secrets

MACHINE_ID_FILE = "/etc/machine-id"
NODE_ID_BITS = 63

Identity = collections.namedtuple("Identity", "node previous")  # previous: None or old id


def binding(path):
    """What the node id belongs to: this host and this file."""
    try:
        with open(MACHINE_ID_FILE, encoding="ascii", errors="replace") as f:
            machine = f.read().strip()
    except OSError:
        machine = ""
    return f"{machine}:{os.stat(path).st_ino}"


def establish(conn, path):
    """The node id for this database here, new when the database was copied or
    restored to another file or host. Runs inside the caller's transaction."""
    here = binding(path)
    meta = dict(conn.execute("SELECT key, value FROM tinymq_meta "
                             "WHERE key IN ('node_id', 'bound_to')"))
    node, bound = meta.get("node_id"), meta.get("bound_to")
    usable = isinstance(node, int) and node > 0
    if usable and bound in (None, here):
        if bound is None:  # a database from before the binding existed: bind it now
            _set(conn, "bound_to", here)
        return Identity(node, None)
    new = secrets.randbits(NODE_ID_BITS) or 1
    _set(conn, "node_id", new)
    _set(conn, "bound_to", here)
    return Identity(new, node if usable else None)


def start_run(conn):
    """Close the open streams (new rows go to new ones), forget closed streams without
    rows and the notes of moved rows (the scheduler reads every stream at start)."""
    conn.execute("UPDATE tinymq_streams SET open = NULL WHERE open IS NOT NULL")
    conn.execute("DELETE FROM tinymq_streams WHERE NOT EXISTS "
                 "(SELECT 1 FROM mqout WHERE stream = tinymq_streams.id)")
    conn.execute("DELETE FROM tinymq_moved")


def _set(conn, key, value):
    conn.execute("INSERT OR REPLACE INTO tinymq_meta (key, value) VALUES (?, ?)", (key, value))
