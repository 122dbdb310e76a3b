"""The job: its status names, the options a request carries, and its one typed record."""
