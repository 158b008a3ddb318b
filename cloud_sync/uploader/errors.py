"""Why a connection to the cloud broker is given up."""


class LinkDead(Exception):
    """The broker stopped answering (a half-open connection), or refused us for good."""
