import type {Readable} from 'node:stream'

import type {Descriptor} from './descriptor.js'

/**
 * Small storage interfaces keyed by descriptor, after oras-go's `content`
 * package. The local layout store implements all of them; the remote
 * registry client implements them too, so one copy() moves artifacts
 * between any two.
 */

/** Content that is pushed: bytes in memory or a stream. */
export type Content = Uint8Array | Readable

export interface Fetcher {
  /** A stream of the blob's bytes that fails if they do not match `desc`. */
  fetch(desc: Descriptor): Promise<Readable>
}

export interface Pusher {
  /** Store `content`, verified against `expected` (digest and size). */
  push(expected: Descriptor, content: Content): Promise<void>
}

export interface ReadOnlyStorage extends Fetcher {
  exists(desc: Descriptor): Promise<boolean>
}

export interface Storage extends ReadOnlyStorage, Pusher {}

export interface TagResolver {
  /** A tagged reference (or a digest reference) to the manifest descriptor. */
  resolve(reference: string): Promise<Descriptor>
  /** Point `reference` at `desc`, replacing what it pointed at. */
  tag(desc: Descriptor, reference: string): Promise<void>
}

export interface TagLister {
  /** Every tagged reference with its manifest descriptor. */
  list(): Promise<TaggedDescriptor[]>
}

export interface Deleter {
  delete(desc: Descriptor): Promise<void>
}

export interface TaggedDescriptor {
  reference: string
  descriptor: Descriptor
}

/** Everything a full store offers: what `ovm` commands work against. */
export interface Target extends Storage, TagResolver, TagLister, Deleter {}
