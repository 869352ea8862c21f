"""What ships a trained network: export (ONNX, the .pt2 program), the checked .pt2 loader (program.py),
quantisation (quantize.py), `imgclf predict` (predict.py, inputs.py) and `imgclf serve` (webapp.py, access.py,
uploads.py, review.py, web/)."""
