"""Fakes of the commercial CA APIs that cannot run here: AD CS, DigiCert, Entrust and Sectigo."""
