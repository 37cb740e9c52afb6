/**
 * Domain errors of the engine: conditions callers are expected to catch and report.
 *
 * @module
 */

/** A checkpoint could not be loaded: a file is missing, unreadable, truncated or inconsistent with the config. */
export class ModelLoadError extends Error {
  /** The file the problem is in, when there is one. */
  readonly file: string | undefined;
  /** The tensor the problem is in, when there is one. */
  readonly tensor: string | undefined;

  /** Makes the error; `file` and `tensor` name where the problem is. */
  constructor(message: string, options?: { file?: string; tensor?: string; cause?: unknown }) {
    super(message, { cause: options?.cause });
    this.name = "ModelLoadError";
    this.file = options?.file;
    this.tensor = options?.tensor;
  }
}

/** The checkpoint describes a model this engine does not implement (architecture, activation, rope scaling). */
export class UnsupportedModelError extends ModelLoadError {
  /** Makes the error. */
  constructor(message: string, options?: { file?: string; cause?: unknown }) {
    super(message, options);
    this.name = "UnsupportedModelError";
  }
}

/** The request does not fit the model: a prompt longer than the context, an out-of-vocabulary id. */
export class ContextOverflowError extends RangeError {
  /** Makes the error. */
  constructor(message: string) {
    super(message);
    this.name = "ContextOverflowError";
  }
}

/** The model was used after `dispose()`. */
export class ModelDisposedError extends Error {
  /** Makes the error. */
  constructor() {
    super("Cannot use the model: it has been disposed");
    this.name = "ModelDisposedError";
  }
}

/** The WebGPU device was lost or an adapter could not provide what the model needs. */
export class GpuError extends Error {
  /** Makes the error. */
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "GpuError";
  }
}
