"""The device's side of the cloud: signing what it sends with its AWS identity."""
