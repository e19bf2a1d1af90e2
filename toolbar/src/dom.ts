/**
 * Small DOM helpers shared by the panel's parts.
 */
import { ApiError } from './api';

/** The text to show for an error: the server's message for an API error. */
export function errorMessage(error: unknown): string {
  if (error instanceof ApiError || error instanceof Error) {
    return error.message;
  }
  return String(error);
}

/** An element with attributes and, optionally, text. */
export function el(tag: string, attrs: { [name: string]: string } = {}, text?: string): HTMLElement {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    node.setAttribute(name, value);
  }
  if (text !== undefined) {
    node.textContent = text;
  }
  return node;
}

/** A form control with its label in front. */
export function labelled(label: string, control: HTMLElement): HTMLElement {
  const node = el('label', { class: 'ipp-ext-field' });
  node.append(el('span', {}, label), control);
  return node;
}
