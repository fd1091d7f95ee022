"""The admin API's logic, without HTTP: admins and their credentials, sessions and CSRF tokens,
the audit log, the operations on apps and keys that the command line shares, the request log and
its retention, the dashboard's figures."""
