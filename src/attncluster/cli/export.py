"""``attncluster export``."""

from __future__ import annotations

from attncluster.cli.common import add_config, add_weights, model_config

HELP = "export to ONNX (optionally int8) and a Triton model repository"
DESCRIPTION = ("Export weights to one ONNX graph: one uint8 input per modality (batch, frames, F), dequantized inside "
               "the graph; outputs probabilities and logits; metadata for --onnx. A parity check against PyTorch "
               "(max |dprob| <= 1e-5, identical top-20) runs before anything is written.")

# attncluster.export's values (a test checks they agree): that module imports torch, and --help must not.
DEFAULT_OPSET = 18
SUPPORTED_OPSETS = (18, 19, 20)
INPUT_DTYPE_CHOICES = ("auto", "uint8", "float32")


def add_args(p) -> None:
    add_config(p, required=False, from_weights=True)
    add_weights(p)
    p.add_argument("--output", required=True, metavar="FILE.onnx", help="the ONNX file to write")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, metavar="N",
                   help=f"ONNX opset, one of {', '.join(map(str, SUPPORTED_OPSETS))} (default {DEFAULT_OPSET})")
    p.add_argument("--int8", action="store_true", help="dynamic int8 quantization of the MLP head (onnxruntime)")
    p.add_argument("--triton", metavar="DIR",
                   help="also write a Triton model repository DIR/NAME/{config.pbtxt,1/model.onnx}")
    p.add_argument("--triton-name", default="attncluster", metavar="NAME",
                   help="Triton model name (default attncluster)")
    p.add_argument("--max-batch-size", type=int, default=256, metavar="N", help="Triton max_batch_size (default 256)")
    p.add_argument("--vocab", metavar="CSV", help="YouTube-8M vocabulary.csv: class names stored in the graph metadata")
    p.add_argument("--input-dtype", choices=INPUT_DTYPE_CHOICES, default="auto",
                   help="auto (default): the dtype of the config's data (its first record); uint8: dataset-quantized "
                   "features; float32: float features as they are (video-level)")


def run(args) -> int:
    from attncluster.export import export_onnx

    export_onnx(model_config(args), args.weights, args.output, opset=args.opset, int8=args.int8,
                triton=args.triton, triton_name=args.triton_name, max_batch_size=args.max_batch_size,
                vocab=args.vocab, input_dtype=args.input_dtype)
    return 0
