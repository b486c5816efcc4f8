"""orgsyncd: roster files in over SFTP, learners and licences out."""

__version__ = "0.1.0"
