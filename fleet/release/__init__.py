"""The Balena release: its tags (the controller's match) and its build context (balena/ + rendered models)."""
