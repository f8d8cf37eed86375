import unittest

from prices import apply_discount, total


class PricesTest(unittest.TestCase):
    def test_discount(self):
        self.assertEqual(apply_discount(200.0, 10), 180.0)
        self.assertEqual(apply_discount(19.99, 0), 19.99)

    def test_total(self):
        self.assertEqual(total([1.10, 2.20]), 3.3)


if __name__ == "__main__":
    unittest.main()
