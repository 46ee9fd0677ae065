"""What the tests share: real keys and tokens, servers, brokers, files, and the helpers more than one test
module needs. Test modules import from here, never from one another (tests/system/test_layout.py checks)."""
